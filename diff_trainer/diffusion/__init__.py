"""The math of masked diffusion: schedules, forward process, losses, ELBO, attention masks, the masked-only head."""

from .attention import (
    additive_mask,
    annealed_allowed,
    annealed_attention_mask,
    annealing_ratio,
    document_ids,
    same_document_allowed,
)
from .elbo import elbo_nll, elbo_nll_of, elbo_terms, monte_carlo_copies
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
    diffusion_loss,
    diffusion_loss_sum,
    masked_diffusion_loss,
    masked_token_losses,
    row_scales,
)
from .masked_head import MaskedHead, full_logits_ce_fn, masked_ce_fn
from .schedules import CosineSchedule, LinearSchedule, NoiseSchedule, get_schedule

__all__ = [
    "CosineSchedule",
    "LOSS_NORMALIZATIONS",
    "LinearSchedule",
    "MaskedHead",
    "NoiseSchedule",
    "additive_mask",
    "annealed_allowed",
    "annealed_attention_mask",
    "annealing_ratio",
    "denominator",
    "diffusion_loss",
    "diffusion_loss_sum",
    "document_ids",
    "elbo_nll",
    "elbo_nll_of",
    "elbo_terms",
    "full_logits_ce_fn",
    "get_schedule",
    "mask_exact_count",
    "mask_tokens",
    "masked_ce_fn",
    "masked_diffusion_loss",
    "masked_token_losses",
    "monte_carlo_copies",
    "replace_prompt_with_mask",
    "row_scales",
    "same_document_allowed",
    "sample_times",
    "stratified_mask_counts",
    "truncate_random_length",
]
