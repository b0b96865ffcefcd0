"""Block diffusion (BD3-LM, Arriola et al. 2025, arXiv 2503.09573): autoregressive over blocks, masked diffusion inside.

A row of length L is cut into L / L' blocks of L' tokens. Block b draws its own time t_b, its maskable tokens
(label != -100) are masked with probability 1 − α(t_b), and the model predicts them from the noisy block and the
*clean* blocks before it. L' = 1 is a causal LM, L' = L is full-sequence masked diffusion.

Training runs all blocks in one forward pass over [x_t ; x0] (length 2L, the same position ids for both halves):

    query \\ key        noisy block c        clean block c
    noisy block b      c == b               c < b
    clean block b      never                c <= b

The loss is read from the noisy half only; the clean half supplies the keys and values of the clean prefixes,
computed exactly as the sampler's cache computes them (a clean block never sees a later block).

shift (AR-adapted models, Fast-dLLM v2 / SDAR): the logits at position i predict token i + 1. Inside a block, token
i is predicted from the noisy half at i − 1. The first token of block b is predicted from the *clean* half at
position bL' − 1, the last token of block b − 1 run clean: the sampler predicts it from the logits of the forward
that appends block b − 1 to its cache, which sees clean blocks ≤ b − 1 and nothing of block b. (Reading the noisy
half there would condition the prediction on a noisy copy of block b − 1 that the sampler never has.) Position 0
has no predecessor and is never scored.

Every random function takes a `generator`, so collators and tests are reproducible.
"""

import torch
import torch.nn.functional as F

from .forward import mask_tokens, sample_times
from .losses import denominator, diffusion_loss_sum, row_scales


def check_block_size(length: int, block_size: int) -> int:
    """The number of blocks L / L' of a row of `length`; refuses a block size that does not divide it."""
    if block_size < 1 or length % block_size:
        raise ValueError(
            f"block size {block_size} must be a positive divisor of the row length {length}: "
            "choose --diffusion_block_size among the divisors of --block_size."
        )
    return length // block_size


def block_times(
    batch_size: int,
    num_blocks: int,
    *,
    antithetic: bool = True,
    low: float = 0.0,
    high: float = 1.0,
    generator=None,
    device=None,
) -> torch.Tensor:
    """One time per block, Tensor[B, num_blocks] in [low, high).

    antithetic: stratified over all B·num_blocks blocks of the batch (one offset u, t_k = (u + k/N) mod 1, the
    project's `sample_times`), so the times of a batch cover [0, 1) evenly, as bd3lms `_sample_t` does.
    [low, high] is BD3-LM's clipped schedule U[β, ω] (a lower-variance training loss; the full range [0, 1] keeps
    the loss a bound on the NLL).
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"the clipped time range must satisfy 0 <= low <= high <= 1, got [{low}, {high}].")
    t = sample_times(batch_size * num_blocks, antithetic=antithetic, generator=generator, device=device)
    return low + (high - low) * t.reshape(batch_size, num_blocks)  # BD3-LM clipped schedule: t ~ U[β, ω]


def mask_blocks(input_ids, maskable, mask_prob, block_size: int, mask_token_id: int, generator=None):
    """Mask each maskable token of block b of row i with probability mask_prob[i, b] (BD3-LM forward process q).

    The rows are viewed as B·num_blocks rows of one block each and masked by `forward.mask_tokens`, so with one
    block per row this is exactly the masked-diffusion forward process of the same generator state.
    Returns (noisy_ids, masked), both [B, L].
    """
    batch_size, length = input_ids.shape
    blocks = batch_size * check_block_size(length, block_size)
    noisy, masked = mask_tokens(
        input_ids.reshape(blocks, block_size),
        maskable.reshape(blocks, block_size),
        mask_prob.reshape(blocks),
        mask_token_id,
        generator,
    )
    return noisy.reshape(batch_size, length), masked.reshape(batch_size, length)


def noise_blocks(
    input_ids,
    labels,
    schedule,
    block_size: int,
    mask_token_id: int,
    *,
    antithetic: bool = True,
    low: float = 0.0,
    high: float = 1.0,
    complementary: bool = False,
    generator=None,
) -> dict:
    """A noised block-diffusion batch from clean rows and their labels.

    Keys: `noisy_ids`, `clean_ids`, `masked`, `maskable` ([B, L]) and `loss_weight` ([B, num_blocks], the
    schedule's −α'(t)/(1 − α(t)) at each block's time). complementary (Fast-dLLM v2): the batch is followed by a
    copy of every row masked with the complement of its mask (every maskable token is masked in exactly one of the
    two copies), 2B rows in all; a complement token is masked with probability 1 − p, so its weight is 1/(1 − p),
    which is the linear schedule's weight at that rate: only the linear schedule is accepted.
    """
    batch_size, length = input_ids.shape
    maskable = labels != -100
    times = block_times(
        batch_size,
        check_block_size(length, block_size),
        antithetic=antithetic,
        low=low,
        high=high,
        generator=generator,
        device=input_ids.device,
    )
    mask_prob = schedule.mask_prob(times)
    noisy, masked = mask_blocks(input_ids, maskable, mask_prob, block_size, mask_token_id, generator)
    weight = schedule.loss_weight(times)
    if complementary:
        if schedule.name != "linear":
            raise ValueError(
                f"complementary masks weight the complement by 1/(1 - p), the linear schedule's "
                f"weight; the {schedule.name!r} schedule has no such pair: use the linear schedule."
            )
        complement = maskable & ~masked
        noisy = torch.cat([noisy, torch.where(complement, mask_token_id, input_ids)])
        masked, maskable = torch.cat([masked, complement]), maskable.repeat(2, 1)
        input_ids = input_ids.repeat(2, 1)
        weight = torch.cat([weight, 1.0 / (1.0 - mask_prob)])  # Fast-dLLM v2 complementary mask m̄ = 1 − m
    return {"noisy_ids": noisy, "clean_ids": input_ids, "masked": masked, "maskable": maskable, "loss_weight": weight}


def vectorised_inputs(noisy_ids, clean_ids, position_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids [x_t ; x0] and their position ids (the same for both halves), [B, 2L] each (BD3-LM x_t ⊕ x0)."""
    if position_ids is None:
        position_ids = torch.arange(clean_ids.shape[1], device=clean_ids.device).expand_as(clean_ids)
    return torch.cat([noisy_ids, clean_ids], dim=1), torch.cat([position_ids, position_ids], dim=1)


def block_attention_allowed(
    length: int, block_size: int, *, document_ids=None, attention_mask=None, device=None
) -> torch.Tensor:
    """Bool [B or 1, 1, 2L, 2L]: which keys each query of [x_t ; x0] may see (the table of the module docstring).

    document_ids [B, L] (packed rows, `attention.document_ids`): also never across documents. attention_mask
    [B, L] (0 on padding): padding keys are never seen. Turn it into the model's mask with `attention.additive_mask`
    (a float mask works under sdpa and eager alike; a bool 4-D mask leaks padding under eager).
    """
    check_block_size(length, block_size)
    if document_ids is not None:
        device = document_ids.device
    elif attention_mask is not None:
        device = attention_mask.device
    block = torch.arange(length, device=device).repeat(2) // block_size
    clean = torch.arange(2 * length, device=device) >= length
    query_block, key_block = block[:, None], block[None, :]
    query_clean, key_clean = clean[:, None], clean[None, :]
    noisy_to_noisy = ~query_clean & ~key_clean & (key_block == query_block)  # BD3-LM block-diagonal M_BD
    noisy_to_clean = ~query_clean & key_clean & (key_block < query_block)  # offset block-causal M_OBC
    clean_to_clean = query_clean & key_clean & (key_block <= query_block)  # block-causal M_BC
    allowed = (noisy_to_noisy | noisy_to_clean | clean_to_clean)[None, None]
    if document_ids is not None:
        documents = document_ids.repeat(1, 2)
        allowed = allowed & (documents[:, :, None] == documents[:, None, :])[:, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool().repeat(1, 2)[:, None, None, :]
    return allowed


def block_causal_allowed(position_ids, block_size: int, attention_mask=None, first_query: int = 0) -> torch.Tensor:
    """Bool [B, 1, T - first_query, T]: query at position p sees the keys at positions in blocks ≤ p // L' (a clean
    row, as the clean half above and the sampler's prefix see it); with `attention_mask`, padding keys are never
    seen. `first_query`: only the queries from that column on (a window fed over a cache of the columns before it)."""
    block = position_ids // block_size
    allowed = (block[:, None, :] <= block[:, first_query:, None])[:, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    return allowed


def predictor_positions(length: int, block_size: int, shift: bool, device=None) -> torch.Tensor:
    """Index into the 2L logits of [x_t ; x0] of the logits that predict each token: LongTensor[L].

    Without shift, token i is predicted at noisy position i. With shift at i − 1, in the noisy half inside a block
    and in the clean half at a block's first token (module docstring); position 0 gets −1 (never scored).
    """
    positions = torch.arange(length, device=device)
    if not shift:
        return positions
    block_start = positions % block_size == 0
    return torch.where(block_start, length + positions - 1, positions - 1).masked_fill(positions == 0, -1)


def block_token_losses(logits, targets, masked, block_size: int, *, shift: bool = False) -> torch.Tensor:
    """Float32 CE(logits predicting x0_i, x0_i) at masked positions, 0 elsewhere: Tensor[B, L].

    `logits` [B, 2L, V] come from the forward over [x_t ; x0]; only the masked positions' rows are gathered.
    """
    length = targets.shape[1]
    source = predictor_positions(length, block_size, shift, device=targets.device)
    masked = masked & (source >= 0)
    rows, cols = masked.nonzero(as_tuple=True)
    token_ce = F.cross_entropy(logits[rows, source[cols]].float(), targets[rows, cols], reduction="none")
    losses = torch.zeros(masked.shape, dtype=torch.float32, device=logits.device)
    losses[rows, cols] = token_ce
    return losses


def block_loss_sum(token_losses, weight, row_scale=None) -> torch.Tensor:
    """Numerator Σ_i row_scale_i Σ_b w(t_ib) Σ_{j ∈ block b} token_losses[i, j] (BD3-LM L_BD, summed over the batch).

    token_losses [B, L], weight [B, num_blocks]: each block is one row of `losses.diffusion_loss_sum`.
    """
    batch_size, num_blocks = weight.shape
    per_block = token_losses.reshape(batch_size * num_blocks, -1)
    if row_scale is not None:
        row_scale = row_scale.repeat_interleave(num_blocks)
    return diffusion_loss_sum(per_block, weight.reshape(-1), row_scale)


def block_diffusion_loss(
    logits,
    targets,
    masked,
    maskable,
    weight,
    block_size: int,
    kind: str,
    *,
    shift: bool = False,
    total_denominator=None,
) -> torch.Tensor:
    """The block-diffusion loss of the logits of [x_t ; x0] with the project's normalisations (`losses.py`):
    numerator / (the batch's denominator clamped to ≥ 1, or `total_denominator`)."""
    token_losses = block_token_losses(logits, targets, masked, block_size, shift=shift)
    numerator = block_loss_sum(token_losses, weight, row_scales(kind, maskable))
    if total_denominator is None:
        total_denominator = denominator(kind, maskable, masked).clamp(min=1)
    return numerator / total_denominator
