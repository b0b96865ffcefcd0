"""The math of masked diffusion: schedules, forward process, losses, ELBO, attention annealing."""

from .attention import annealed_attention_mask, annealing_ratio
from .elbo import elbo_nll, elbo_terms, monte_carlo_copies
from .forward import (
    mask_exact_count,
    mask_tokens,
    replace_prompt_with_mask,
    sample_times,
    stratified_mask_counts,
    truncate_random_length,
)
from .losses import (
    LOSS_NORMALIZATIONS,
    denominator,
    diffusion_loss_sum,
    masked_diffusion_loss,
    masked_token_losses,
    row_scales,
)
from .schedules import CosineSchedule, LinearSchedule, NoiseSchedule, get_schedule

__all__ = [
    "CosineSchedule", "LOSS_NORMALIZATIONS", "LinearSchedule", "NoiseSchedule", "annealed_attention_mask",
    "annealing_ratio", "denominator", "diffusion_loss_sum", "elbo_nll", "elbo_terms", "get_schedule",
    "mask_exact_count", "mask_tokens", "masked_diffusion_loss", "masked_token_losses", "monte_carlo_copies", "replace_prompt_with_mask",
    "row_scales", "sample_times", "stratified_mask_counts", "truncate_random_length",
]
