import math

import pytest
import torch

from diff_trainer.diffusion.schedules import CosineSchedule, LinearSchedule, get_schedule

EPS = 1e-3


def test_linear_mask_prob_and_weight_by_hand():
    schedule = get_schedule("linear", eps=EPS)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # p_mask = (1 - eps)·t + eps
    expected_prob = torch.tensor([0.001, 0.999 * 0.5 + 0.001, 1.0], dtype=torch.float64)
    assert torch.allclose(schedule.mask_prob(t), expected_prob, rtol=0, atol=1e-15)
    assert torch.allclose(schedule.loss_weight(t), torch.tensor([1000.0, 1 / 0.5005, 1.0], dtype=torch.float64))
    # exactly 1/p_mask, bit for bit
    assert torch.equal(schedule.loss_weight(t), 1.0 / schedule.mask_prob(t))


def test_linear_without_eps_is_identity_time():
    t = torch.linspace(0.1, 1.0, 10)
    assert torch.equal(LinearSchedule(eps=0.0).mask_prob(t), t)


def test_cosine_weight_matches_numerical_derivative():
    schedule = CosineSchedule(eps=EPS)
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.99], dtype=torch.float64)
    t_eff = schedule.effective_time(t)
    h = 1e-6
    derivative = (schedule.alpha(t_eff + h) - schedule.alpha(t_eff - h)) / (2 * h)
    expected = -derivative / (1 - schedule.alpha(t_eff))
    assert torch.allclose(schedule.loss_weight(t), expected, rtol=1e-7)
    assert torch.allclose(schedule.mask_prob(t), 1 - torch.cos(math.pi / 2 * t_eff))


def test_cosine_end_points():
    schedule = CosineSchedule(eps=0.0)
    assert schedule.mask_prob(torch.tensor(1.0)).item() == pytest.approx(1.0)
    assert schedule.mask_prob(torch.tensor(0.0)).item() == 0.0
    # at t=1 the weight is (pi/2)·sin(pi/2)/(1 - 0) = pi/2
    assert schedule.loss_weight(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(math.pi / 2)


def test_get_schedule_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="linear, cosine"):
        get_schedule("sqrt")
    assert isinstance(get_schedule("cosine", eps=0.01), CosineSchedule)
    assert get_schedule("cosine", eps=0.01).eps == 0.01
