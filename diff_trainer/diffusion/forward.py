"""The forward (noising) process of masked diffusion: sample times, replace tokens by the mask id.

`maskable` marks the positions the model learns (label != -100); the prompt and ignored padding are never masked.
Every function takes an optional `torch.Generator` so collators and tests can be reproducible.
"""

import torch


def _uniform(shape, generator, device) -> torch.Tensor:
    """U[0,1) samples drawn on the generator's device, returned on `device`."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def sample_times(batch_size: int, *, antithetic: bool = True, generator=None, device=None) -> torch.Tensor:
    """One diffusion time per sequence in [0, 1).

    antithetic: stratified over the batch, t_i = (u + i/B) mod 1 with a single u (lower-variance loss, MDLM);
    otherwise t_i ~ U(0, 1) independently.
    """
    if not antithetic:
        return _uniform((batch_size,), generator, device)
    offset = _uniform((), generator, device)
    return (offset + torch.arange(batch_size, device=device) / batch_size) % 1.0  # t_i = (u + i/B) mod 1


def mask_tokens(input_ids, maskable, mask_prob, mask_token_id: int, generator=None):
    """Mask each maskable token of row i independently with probability mask_prob[i] (LLaDA forward process).

    Returns (noisy_ids, masked); masked is a subset of maskable.
    """
    coin = _uniform(input_ids.shape, generator, input_ids.device)
    masked = maskable & (coin < mask_prob.to(coin.dtype).unsqueeze(1))
    return torch.where(masked, mask_token_id, input_ids), masked


def mask_exact_count(input_ids, maskable, counts, mask_token_id: int, generator=None):
    """Mask exactly counts[i] of row i's maskable positions, chosen uniformly without replacement.

    Counts above the number of maskable positions are clipped. Returns (noisy_ids, masked).
    """
    scores = _uniform(input_ids.shape, generator, input_ids.device).masked_fill(~maskable, -1.0)
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)  # rank 0 = highest score; non-maskable rank last
    counts = torch.minimum(counts.to(input_ids.device), maskable.sum(dim=1))
    masked = ranks < counts.unsqueeze(1)
    return torch.where(masked, mask_token_id, input_ids), masked


def stratified_mask_counts(num_maskable, num_samples: int, generator=None) -> torch.Tensor:
    """Masked-token counts l ~ U{1..L_i} for `num_samples` Monte-Carlo samples, stratified across the samples.

    Per row one k ~ U{1..L} is drawn and sample j gets l_j = ((k - 1 + floor(j·L/n)) mod L) + 1
    (LLaDA get_log_likelihood.py): each l_j is exactly uniform, and together they cover 1..L evenly.
    `num_maskable` is a LongTensor[B] or an int (then B = 1). Returns LongTensor[num_samples, B];
    rows with L = 0 get count 0.
    """
    lengths = torch.as_tensor(num_maskable, dtype=torch.long).reshape(-1)
    device = lengths.device
    first = (_uniform(lengths.shape, generator, device) * lengths).long()  # k - 1 ~ U{0..L-1}
    sample_index = torch.arange(num_samples, device=device).unsqueeze(1)
    spread = sample_index * lengths // num_samples  # floor(j·L/n)
    counts = (first + spread) % lengths.clamp(min=1) + 1
    return torch.where(lengths > 0, counts, 0)


def truncate_random_length(labels, attention_mask, prob: float, generator=None):
    """LLaDA's random sequence length, shape-preserving: with probability `prob` per row keep only a prefix.

    The kept length is U{1..L}; from there on labels become -100 and attention 0. Returns new tensors.
    """
    batch_size, length = labels.shape
    truncated = _uniform((batch_size,), generator, labels.device) < prob
    kept = (_uniform((batch_size,), generator, labels.device) * length).long() + 1  # U{1..L}
    kept = torch.where(truncated, kept, length)
    tail = torch.arange(length, device=labels.device).unsqueeze(0) >= kept.unsqueeze(1)
    return labels.masked_fill(tail, -100), attention_mask.masked_fill(tail, 0)


def replace_prompt_with_mask(input_ids, prompt_mask, mask_token_id: int, prob: float, generator=None):
    """Unconditional training for classifier-free guidance: with probability `prob` per row mask the whole prompt.

    Returns (ids, dropped_rows).
    """
    dropped = _uniform((input_ids.shape[0],), generator, input_ids.device) < prob
    ids = torch.where(prompt_mask & dropped.unsqueeze(1), mask_token_id, input_ids)
    return ids, dropped
