import math
import statistics

import pytest
import torch

from diff_trainer.diffusion.policy_losses import group_advantages, grpo_loss, k3_kl, sequence_logps, wd1_loss

REWARDS = torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 2.0, 0.5])  # three groups of three, the middle one flat


def loop_advantages(rewards, group_size, scale=True):
    """Advantages group by group with the statistics module (sample standard deviation)."""
    values = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean, std = statistics.fmean(group), statistics.stdev(group)
        values += [(r - mean) / (std + 1e-4) if scale else r - mean for r in group]
    return values


def loop_grpo_loss(logps, old, ref, rewards, mask, group_size, epsilon, beta):
    """DESIGN.md §3d written out token by token in Python floats, advantages normalised per group."""
    advantages = loop_advantages(rewards, group_size)
    rows = []
    for i, advantage in enumerate(advantages):
        terms = []
        for k in range(len(mask[i])):
            if not mask[i][k]:
                continue
            ratio = math.exp(logps[i][k] - old[i][k])
            clipped = min(max(ratio, 1 - epsilon), 1 + epsilon)
            delta = ref[i][k] - logps[i][k]
            terms.append(min(ratio * advantage, clipped * advantage) - beta * (math.exp(delta) - delta - 1))
        rows.append(sum(terms) / len(terms))
    return -sum(rows) / len(rows)


def test_group_advantages_are_normalised_within_each_group():
    advantages = group_advantages(REWARDS, group_size=3)
    torch.testing.assert_close(advantages, torch.tensor(loop_advantages(REWARDS.tolist(), 3)))
    assert torch.equal(advantages[3:6], torch.zeros(3))  # a group whose completions all scored the same learns nothing
    torch.testing.assert_close(
        group_advantages(REWARDS, 3, scale=False), torch.tensor(loop_advantages(REWARDS.tolist(), 3, scale=False))
    )
    with pytest.raises(ValueError, match="9 rewards do not split into groups of 2"):
        group_advantages(REWARDS, 2)


def test_grpo_loss_equals_a_token_by_token_loop_with_clipping_and_kl():
    generator = torch.Generator().manual_seed(0)
    shape = (9, 5)
    logps = -torch.rand(shape, generator=generator, dtype=torch.float64) * 3
    old = logps + (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5)  # ratios up to e^0.5: clipped
    ref = logps + (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5)
    mask = torch.rand(shape, generator=generator) < 0.7
    mask[:, 0] = True
    loss = grpo_loss(logps, old, group_advantages(REWARDS.double(), 3), mask, epsilon=0.2, beta=0.1, ref_logps=ref)
    expected = loop_grpo_loss(logps.tolist(), old.tolist(), ref.tolist(), REWARDS.tolist(), mask.tolist(), 3, 0.2, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_k3_kl_is_zero_at_equality_and_positive_elsewhere():
    logps = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.equal(k3_kl(logps, logps), torch.zeros(3))
    ref = torch.tensor([-1.5, -1.0, -0.5])
    torch.testing.assert_close(k3_kl(logps, ref), torch.tensor([math.exp(-0.5) + 0.5 - 1, math.exp(1) - 2, 0.0]))


def test_wd1_loss_equals_a_loop_over_groups_and_pushes_up_the_best_completion():
    logps = torch.tensor([-3.0, -2.0, -4.0, -1.0, -5.0, -2.5], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 1.0, 0.0])
    advantages = group_advantages(rewards, 3, scale=False)
    loss = wd1_loss(logps, advantages, group_size=3, psi=2.0)
    expected = 0.0
    for start in (0, 3):
        scores = [2.0 * a for a in advantages[start : start + 3].tolist()]
        positive = [math.exp(s) / sum(math.exp(x) for x in scores) for s in scores]
        negative = [math.exp(-s) / sum(math.exp(-x) for x in scores) for s in scores]
        expected += sum((n - p) * lp for p, n, lp in zip(positive, negative, logps[start : start + 3].tolist())) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logps.grad[0] < 0 and logps.grad[3] < 0  # descending raises the likelihood of each group's best
    assert logps.grad[1] > 0 and logps.grad[5] > 0


def test_wd1_loss_is_zero_when_a_group_scored_the_same():
    token_logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.25, -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(sequence_logps(token_logps, mask), torch.tensor([-3.0, -3.75]))
    assert wd1_loss(sequence_logps(token_logps, mask), torch.zeros(2), group_size=2).item() == 0.0
