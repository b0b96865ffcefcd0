"""Noise schedules of absorbing (masked) diffusion: how likely a token is masked at time t, and its loss weight.

A schedule is a survival curve alpha(t): the probability that a token is still clean at time t, with alpha(0) = 1
and alpha(1) = 0. Times are first squeezed into [eps, 1] so that no sequence is left completely clean.
"""

import math

import torch


class NoiseSchedule:
    """Base class: subclasses define `alpha` and its derivative `alpha_derivative`."""

    name = ""

    def __init__(self, eps: float = 1e-3):
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1], got {eps}")
        self.eps = eps

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def effective_time(self, t: torch.Tensor) -> torch.Tensor:
        """t' = (1 - eps)·t + eps (LLaDA's p_mask = (1-ε)t + ε)."""
        return (1.0 - self.eps) * t + self.eps

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a maskable token is masked at time t: 1 - alpha(t')."""
        return 1.0 - self.alpha(self.effective_time(t))

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-token weight of the cross-entropy at time t: -alpha'(t') / (1 - alpha(t')) (MDLM eq. 10)."""
        t_eff = self.effective_time(t)
        return -self.alpha_derivative(t_eff) / (1.0 - self.alpha(t_eff))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


class LinearSchedule(NoiseSchedule):
    """alpha(t) = 1 - t: mask probability t', loss weight 1/t' (LLaDA eq. 3, the 1/t weighting)."""

    name = "linear"

    def alpha(self, t):
        return 1.0 - t

    def alpha_derivative(self, t):
        return -torch.ones_like(t)

    # Both written directly (not via alpha) so they are exactly p_mask = t' and 1/p_mask in floating point.
    def mask_prob(self, t):
        return self.effective_time(t)

    def loss_weight(self, t):
        return 1.0 / self.effective_time(t)


class CosineSchedule(NoiseSchedule):
    """alpha(t) = cos(pi·t/2): few masks early, many late."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def alpha_derivative(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


SCHEDULES = {cls.name: cls for cls in (LinearSchedule, CosineSchedule)}


def get_schedule(name: str, eps: float = 1e-3) -> NoiseSchedule:
    """The schedule called `name` ("linear" or "cosine")."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](eps=eps)
