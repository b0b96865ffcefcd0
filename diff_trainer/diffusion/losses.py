"""The masked-diffusion training loss, split into a numerator and a denominator.

loss = Σ_rows row_scale_i · weight_i · Σ_masked CE(logits, x0)  /  denominator

Keeping the two apart lets the trainer sum each over gradient-accumulation micro-batches and processes and divide
once, so that accumulation and DDP give the gradient of one big batch. The four normalisations (DESIGN.md §3):

    kind            row_scale_i              denominator
    llada_pretrain  1                        B·L (L = sequence length; LLaDA pretraining)
    llada_sft       1 / answer_length_i      B   (LLaDA SFT; answer length = maskable positions of the row)
    masked          1                        number of masked tokens (DiffuLLaMA)
    token           1                        number of maskable tokens (dllm)
"""

import torch
import torch.nn.functional as F

LOSS_NORMALIZATIONS = ("llada_pretrain", "llada_sft", "masked", "token")


def _check_kind(kind: str) -> None:
    if kind not in LOSS_NORMALIZATIONS:
        raise ValueError(f"unknown loss normalization {kind!r}; valid: {', '.join(LOSS_NORMALIZATIONS)}")


def masked_token_losses(logits, targets, masked, *, shift: bool = False) -> torch.Tensor:
    """Float32 cross-entropy CE(logits_i, x0_i) at masked positions, 0 elsewhere: Tensor[B, L].

    shift=True (AR-adapted models, DiffuLLaMA/Dream): the logits at i-1 predict token i, so position 0 never counts.
    Only masked positions are gathered before the softmax.
    """
    if shift:
        logits, targets, masked = logits[:, :-1], targets[:, 1:], masked[:, 1:]
    rows, cols = masked.nonzero(as_tuple=True)
    token_ce = F.cross_entropy(logits[rows, cols].float(), targets[rows, cols], reduction="none")
    losses = torch.zeros(masked.shape, dtype=torch.float32, device=logits.device)
    losses[rows, cols] = token_ce
    return F.pad(losses, (1, 0)) if shift else losses


def diffusion_loss_sum(token_losses, weight, row_scale=None) -> torch.Tensor:
    """token_losses: Tensor[B, positions] (or [B, 1] row sums).

    Numerator Σ_i row_scale_i · weight_i · Σ_pos token_losses[i, pos] (LLaDA eq. 3 / MDLM eq. 10 summed)."""
    per_row = weight.to(token_losses.dtype) * token_losses.sum(dim=1)
    if row_scale is not None:
        per_row = per_row * row_scale.to(per_row.dtype)
    return per_row.sum()


def row_scales(kind: str, maskable) -> torch.Tensor:
    """Per-row factor inside the numerator: 1/answer_length for llada_sft, 1 otherwise. Tensor[B] float32."""
    _check_kind(kind)
    if kind == "llada_sft":
        return 1.0 / maskable.sum(dim=1).clamp(min=1).float()
    return torch.ones(maskable.shape[0], device=maskable.device)


def denominator(kind: str, maskable, masked) -> torch.Tensor:
    """This batch's share of the loss denominator (a float32 scalar; sum it over micro-batches and processes)."""
    _check_kind(kind)
    batch_size, length = maskable.shape
    if kind == "llada_pretrain":
        count = batch_size * length
    elif kind == "llada_sft":
        count = batch_size
    elif kind == "masked":
        count = masked.sum()
    else:
        count = maskable.sum()
    return torch.as_tensor(count, dtype=torch.float32, device=maskable.device)


def masked_diffusion_loss(
    logits, targets, masked, maskable, weight, kind: str, shift: bool = False, total_denominator=None
) -> torch.Tensor:
    """`diffusion_loss` of full logits [B, L, V]."""
    row_ce = masked_token_losses(logits, targets, masked, shift=shift).sum(dim=1)
    return diffusion_loss(row_ce, weight, masked, maskable, kind, total_denominator)


def diffusion_loss(row_masked_ce, weight, masked, maskable, kind: str, total_denominator=None) -> torch.Tensor:
    """numerator / denominator from each row's Σ_masked CE (Tensor[B]): the batch's own denominator (clamped to
    ≥ 1), or `total_denominator` when the denominator is summed over gradient-accumulation micro-batches and
    processes (see the module docstring)."""
    numerator = diffusion_loss_sum(row_masked_ce.unsqueeze(1), weight, row_scales(kind, maskable))
    if total_denominator is None:
        total_denominator = denominator(kind, maskable, masked).clamp(min=1)
    return numerator / total_denominator
