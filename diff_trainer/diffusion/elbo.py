"""Monte-Carlo ELBO of a masked diffusion LM: a bound on −log p(x_maskable | rest) per row.

With L maskable tokens, l ~ U{1..L} of them masked uniformly at random (LLaDA eq. 14, get_log_likelihood.py):

    −log p(x) ≤ E_l E_mask [ (L / l) · Σ_masked CE(logits, x0) ]

This equals the expected NLL of the model decoded autoregressively in a uniformly random token order.
"""

import torch

from .forward import mask_exact_count, stratified_mask_counts
from .masked_head import full_logits_ce_fn


def elbo_terms(masked_ce_fn, input_ids, maskable, noisy_ids, masked, counts) -> torch.Tensor:
    """One ELBO sample per row as a log-likelihood lower bound (higher is better): −(L_i / l_i) · Σ_masked CE.

    The masks are given, so policy and reference models can be scored on identical masks (VRPO). `counts` holds
    l_i, the number of masked tokens of each row; rows with l_i = 0 score 0. `masked_ce_fn(noisy_ids, input_ids,
    masked)` gives Σ_masked CE per row (`masked_head.masked_ce_fn`: full logits or the masked-only head). Tensor[B].
    """
    masked_ce = masked_ce_fn(noisy_ids, input_ids, masked)
    lengths = maskable.sum(dim=1).float()
    return -(lengths / counts.clamp(min=1).float()) * masked_ce  # LLaDA eq. 14, one Monte-Carlo term


def monte_carlo_copies(rows: torch.Tensor, num_samples: int) -> torch.Tensor:
    """`num_samples` copies of every row, the copies of a row together: row k·n + j is sample j of row k."""
    return rows.repeat_interleave(num_samples, dim=0)


@torch.no_grad()
def elbo_nll(
    logits_fn, input_ids, maskable, mask_token_id: int, num_samples: int, *, shift: bool = False, generator=None
) -> torch.Tensor:
    """Upper bound on −log p(x_maskable | rest) per row (sum over its tokens, in nats), from `num_samples` masks.

    `logits_fn(noisy_ids)` gets the B·num_samples noisy rows laid out as `monte_carlo_copies` (split the batch into
    fewer rows to save memory) and returns full logits; `elbo_nll_of` takes a masked_ce_fn instead.
    """
    return elbo_nll_of(
        full_logits_ce_fn(logits_fn, shift), input_ids, maskable, mask_token_id, num_samples, generator=generator
    )


@torch.no_grad()
def elbo_nll_of(
    masked_ce_fn, input_ids, maskable, mask_token_id: int, num_samples: int, *, generator=None
) -> torch.Tensor:
    """`elbo_nll` scoring the noisy copies with `masked_ce_fn` (see `elbo_terms`). Mask counts are stratified
    across samples; rows without maskable tokens give 0."""
    counts = stratified_mask_counts(maskable.sum(dim=1), num_samples, generator=generator).T.reshape(-1)
    all_ids, all_maskable = monte_carlo_copies(input_ids, num_samples), monte_carlo_copies(maskable, num_samples)
    noisy_ids, masked = mask_exact_count(all_ids, all_maskable, counts, mask_token_id, generator)
    terms = elbo_terms(masked_ce_fn, all_ids, all_maskable, noisy_ids, masked, counts)
    return -terms.reshape(input_ids.shape[0], num_samples).mean(dim=1)
