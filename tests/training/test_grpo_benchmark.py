"""benchmarks/grpo.py: the variance arithmetic on known values, and the table of a --quick run."""

import importlib.util
import os
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
sys.path.insert(0, BENCHMARKS)
_spec = importlib.util.spec_from_file_location("benchmark_grpo", os.path.join(BENCHMARKS, "grpo.py"))
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def test_pairwise_variance_by_hand_and_as_twice_the_unbiased_variance():
    # pairs of 1, 2, 3, 4: squared differences 1, 4, 9, 1, 4, 1 (each twice, ordered) over 12 ordered pairs
    assert benchmark.pairwise_variance(torch.tensor([1.0, 2.0, 3.0, 4.0])).item() == pytest.approx(40 / 12)
    draws = torch.randn(7, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(benchmark.pairwise_variance(draws), 2 * draws.var(dim=0, unbiased=True))


def test_log_ratio_variances_average_over_completion_tokens_and_sum_over_the_completion():
    # two draws of one completion of tokens (a, b) and a padding position that must not count
    scores = torch.tensor([[[1.0, 4.0, 100.0]], [[3.0, 1.0, -100.0]]])
    mask = torch.tensor([[True, True, False]])
    token, completion = benchmark.log_ratio_variances("coupled", scores, mask)
    assert token == pytest.approx((2.0**2 + 3.0**2) / 2)  # per token (x1 − x2)², both orders, over 2 pairs
    assert completion == pytest.approx((5.0 - 4.0) ** 2)  # sums 5 and 4
    elbo = torch.tensor([[2.0, 7.0], [4.0, 7.0]])  # [R, B]: one value per completion
    assert benchmark.log_ratio_variances("elbo", elbo, mask.repeat(2, 1)) == (2.0, 2.0)  # (4 + 0) / 2


def test_quick_run_gives_one_row_per_estimator_with_phases_timed_and_shared_masks_exact(tmp_path):
    args = benchmark.settle(benchmark.build_parser().parse_args(["--quick"]), str(tmp_path))
    start, rows = benchmark.measure(args)
    assert 0.0 <= start <= 1.0
    assert [row[0] for row in rows] == list(benchmark.ESTIMATORS)
    for row in rows:
        assert len(row) == len(benchmark.HEADERS)
        values = dict(zip(benchmark.HEADERS, row))
        assert 0.0 <= values["held-out exact match"] <= 1.0
        rollout, scoring, backward = (values[f"{phase} s/step"] for phase in benchmark.PHASES)
        assert rollout > 0 and scoring > 0 and backward > 0
        assert rollout + scoring + backward <= values["step s (TRL)"]  # parts of TRL's own step time
        assert values["shared masks: max abs log-ratio"] == 0.0
        assert values["Var log-ratio (completion)"] > 0  # untrained: the draws differ
    elbo = dict(zip(benchmark.HEADERS, rows[2]))
    assert elbo["Var log-ratio (ratio level)"] == elbo["Var log-ratio (completion)"]
