"""Policy-gradient losses on estimated log-probabilities (DESIGN.md §3d): GRPO with k3 KL, and wd1.

Log-probabilities come as per-token values [B, T] with a completion mask, or per sequence (the elbo estimator) as
[B, 1] with a mask of ones. Rows are grouped by prompt: rows g·G .. g·G + G − 1 are the G completions of prompt g.
"""

import torch


def group_advantages(rewards, group_size: int, *, scale: bool = True) -> torch.Tensor:
    """A_i = (r_i − mean_G) / (std_G + 1e-4) within each group of `group_size` rows (TRL's GRPOTrainer: std with
    Bessel's correction, 1e-4 against zero spread); scale=False keeps r_i − mean_G. Tensor[B]."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}.")
    grouped = rewards.reshape(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return advantages.reshape(-1)


def k3_kl(logps, ref_logps) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) by the k3 estimator exp(ℓ_ref − ℓ_θ) − (ℓ_ref − ℓ_θ) − 1 (Schulman 2020; GRPO)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def grpo_loss(
    logps, old_logps, advantages, mask, *, epsilon: float = 0.2, beta: float = 0.0, ref_logps=None
) -> torch.Tensor:
    """−mean_i (1/|o_i|) Σ_k [min(ρ_ik A_i, clip(ρ_ik, 1−ε, 1+ε) A_i) − β KL_ik], ρ = exp(ℓ_θ − ℓ_old) (GRPO,
    DeepSeekMath eq. 3). `mask` [B, T] marks completion tokens; `ref_logps` is needed when beta > 0."""
    ratio = torch.exp(logps - old_logps)
    advantages = advantages.unsqueeze(1)
    objective = torch.minimum(ratio * advantages, ratio.clamp(1 - epsilon, 1 + epsilon) * advantages)
    if beta != 0.0:
        objective = objective - beta * k3_kl(logps, ref_logps)
    mask = mask.to(objective.dtype)
    return -((objective * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


def sequence_logps(token_logps, mask) -> torch.Tensor:
    """log π(o | p) per row [B] as the sum of its completion tokens' log-probabilities."""
    return (token_logps * mask.to(token_logps.dtype)).sum(dim=1)


def wd1_weights(advantages, group_size: int, *, psi: float = 1.0) -> torch.Tensor:
    """wd1's per-completion factor w⁻_i − w⁺_i [B], w⁺ = softmax_G(ψA), w⁻ = softmax_G(−ψA) within each group."""
    scores = (psi * advantages).reshape(-1, group_size)
    return (torch.softmax(-scores, dim=1) - torch.softmax(scores, dim=1)).reshape(-1)


def wd1_loss(sequence_logps, advantages, group_size: int, *, psi: float = 1.0) -> torch.Tensor:
    """wd1's ratio-free weighted likelihood (Tang et al. 2025, arXiv 2507.08838): per group,
    −Σ_i w⁺_i log π(o_i) + Σ_i w⁻_i log π(o_i); mean over groups (`wd1_weights`).
    Equal advantages in a group give w⁺ = w⁻ and no gradient."""
    weights = wd1_weights(advantages, group_size, psi=psi)
    return (weights * sequence_logps).reshape(-1, group_size).sum(dim=1).mean()
