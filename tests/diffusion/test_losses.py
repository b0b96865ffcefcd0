import math

import pytest
import torch

from diff_trainer.diffusion.losses import (
    LOSS_NORMALIZATIONS,
    denominator,
    diffusion_loss_sum,
    masked_diffusion_loss,
    masked_token_losses,
    row_scales,
)

LOG2, LOG3, LOG5 = math.log(2), math.log(3), math.log(5)
GARBAGE = [7.0, -3.0, 11.0]  # logits at unmasked positions: must not matter

TARGETS = torch.tensor([[0, 1, 2, 0], [1, 1, 0, 2]])
MASKABLE = torch.tensor([[False, True, True, True], [False, False, True, True]])  # answer lengths 3 and 2
MASKED = torch.tensor([[False, True, False, True], [False, False, True, True]])
LOGITS = torch.tensor(
    [
        [GARBAGE, [0.0, LOG2, 0.0], GARBAGE, [0.0, 0.0, 0.0]],  # CE: log(4/2), log 3
        [GARBAGE, GARBAGE, [LOG3, 0.0, 0.0], [LOG3, 0.0, 0.0]],  # CE: log(5/3), log 5
    ]
)
WEIGHT = torch.tensor([2.0, 4.0])  # 1/p_mask for p_mask = 0.5, 0.25
ROW_SUMS = (LOG2 + LOG3, LOG5 - LOG3 + LOG5)
WEIGHTED_SUM = 2 * ROW_SUMS[0] + 4 * ROW_SUMS[1]


def test_token_losses_by_hand():
    losses = masked_token_losses(LOGITS, TARGETS, MASKED)
    expected = torch.tensor([[0, LOG2, 0, LOG3], [0, 0, LOG5 - LOG3, LOG5]])
    assert losses.dtype == torch.float32
    assert torch.allclose(losses, expected, atol=1e-6)


def test_shift_uses_previous_logits():
    shifted_logits = torch.cat([LOGITS[:, 1:], torch.zeros(2, 1, 3)], dim=1)  # logits at i-1 predict token i
    shifted = masked_token_losses(shifted_logits, TARGETS, MASKED, shift=True)
    assert torch.allclose(shifted, masked_token_losses(LOGITS, TARGETS, MASKED), atol=1e-6)
    # position 0 has no predecessor and never contributes
    first = torch.zeros_like(MASKED)
    first[:, 0] = True
    assert masked_token_losses(LOGITS, TARGETS, first, shift=True).abs().sum() == 0


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("llada_pretrain", WEIGHTED_SUM / (2 * 4)),
        ("llada_sft", (2 * ROW_SUMS[0] / 3 + 4 * ROW_SUMS[1] / 2) / 2),
        ("masked", WEIGHTED_SUM / 4),
        ("token", WEIGHTED_SUM / 5),
    ],
)
def test_normalisations_by_hand(kind, expected):
    loss = masked_diffusion_loss(LOGITS, TARGETS, MASKED, MASKABLE, WEIGHT, kind)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_numerator_and_denominator_parts():
    token_losses = masked_token_losses(LOGITS, TARGETS, MASKED)
    assert diffusion_loss_sum(token_losses, WEIGHT, None).item() == pytest.approx(WEIGHTED_SUM, rel=1e-6)
    assert torch.allclose(row_scales("llada_sft", MASKABLE), torch.tensor([1 / 3, 1 / 2]))
    assert torch.equal(row_scales("masked", MASKABLE), torch.ones(2))
    assert [denominator(kind, MASKABLE, MASKED).item() for kind in LOSS_NORMALIZATIONS] == [8, 2, 4, 5]


@pytest.mark.parametrize("kind", LOSS_NORMALIZATIONS)
def test_micro_batch_sums_equal_the_full_batch(kind):
    """Summing numerators and denominators over micro-batches reproduces the one-batch loss (grad accumulation)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 7, generator=g)
    targets = torch.randint(0, 7, (6, 5), generator=g)
    maskable = torch.rand(6, 5, generator=g) < 0.7
    masked = maskable & (torch.rand(6, 5, generator=g) < 0.5)
    weight = 1 + torch.rand(6, generator=g)
    numerator = total = 0
    for part in (slice(0, 2), slice(2, 3), slice(3, 6)):
        token_losses = masked_token_losses(logits[part], targets[part], masked[part])
        numerator += diffusion_loss_sum(token_losses, weight[part], row_scales(kind, maskable[part]))
        total += denominator(kind, maskable[part], masked[part])
    full = masked_diffusion_loss(logits, targets, masked, maskable, weight, kind)
    assert (numerator / total).item() == pytest.approx(full.item(), rel=1e-6)


@pytest.mark.parametrize("kind", LOSS_NORMALIZATIONS)
def test_nothing_masked_gives_zero_and_finite_gradient(kind):
    logits = torch.randn(2, 4, 3, requires_grad=True)
    nothing = torch.zeros(2, 4, dtype=torch.bool)
    loss = masked_diffusion_loss(logits, TARGETS, nothing, nothing, WEIGHT, kind, shift=True)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(logits.grad).all()


def test_gradient_flows_only_to_masked_positions_in_float32():
    logits = torch.randn(2, 4, 3, dtype=torch.bfloat16, requires_grad=True)
    loss = masked_diffusion_loss(logits, TARGETS, MASKED, MASKABLE, WEIGHT, "token")
    assert loss.dtype == torch.float32
    loss.backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, MASKED)


def test_unknown_normalisation():
    with pytest.raises(ValueError, match="llada_pretrain, llada_sft, masked, token"):
        denominator("mean", MASKABLE, MASKED)
