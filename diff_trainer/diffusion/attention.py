"""Attention-mask annealing (DiffuLLaMA): move a causal model towards full attention during adaptation.

Each query i sees every key j ≤ i plus each future key with probability `ratio`; the ratio grows linearly from 0
to 1 over the first N training steps.
"""

import torch


def annealing_ratio(step: int, anneal_steps: int) -> float:
    """r = min(1, step / N); N = 0 means no annealing (r = 1)."""
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, step / anneal_steps)


def annealed_attention_mask(attention_mask_2d, ratio: float, generator=None, dtype=torch.float32) -> torch.Tensor:
    """Float-additive 4D mask [B, 1, L, L]: 0 where allowed, finfo(dtype).min where not.

    allowed(i, j) = (j ≤ i OR Bernoulli(ratio)) AND key j is not padding, drawn independently per row.

    Pass it as `model(input_ids, attention_mask=mask)` to a transformers 5 causal LM: a 4D mask is used as-is (no
    causal or padding mask is added on top), under both "eager" and "sdpa". Use `dtype` = the model's dtype (sdpa
    requires the float mask to match the query dtype), and a float mask, not bool (eager adds the mask to the scores).
    """
    batch_size, length = attention_mask_2d.shape
    device = attention_mask_2d.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if ratio >= 1.0:
        allowed = torch.ones(batch_size, 1, length, length, dtype=torch.bool, device=device)
    else:
        draw_device = generator.device if generator is not None else device
        coin = torch.rand(batch_size, 1, length, length, generator=generator, device=draw_device).to(device)
        allowed = causal | (coin < ratio)  # DiffuLLaMA: causal OR Bernoulli(r) future edges
    allowed = allowed & attention_mask_2d.bool()[:, None, None, :]
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)
