"""Wilson intervals: textbook values, the defining equation, and the rows diff-lm-eval prints."""

import math

import pytest

from diff_trainer.eval.confidence import Z_95, accuracy_intervals, wilson_interval


def test_textbook_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)


@pytest.mark.parametrize("successes,total", [(37, 147), (1, 3), (146, 147), (60, 147)])
def test_bounds_solve_the_score_test_equation(successes, total):
    """Each bound p satisfies |p̂ − p| = z·sqrt(p(1 − p)/n) (the score test the interval inverts)."""
    share = successes / total
    for bound in wilson_interval(successes, total):
        assert abs(share - bound) == pytest.approx(Z_95 * math.sqrt(bound * (1 - bound) / total), abs=1e-9)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="total"):
        wilson_interval(0, 0)


def test_rows_for_the_binary_metrics_only():
    results = {
        "results": {
            "docstring_choice": {
                "alias": "docstring_choice",
                "acc,none": 0.4,
                "acc_stderr,none": 0.04,
                "acc_mutual_info,none": 0.6,
            },
            "docstring_perplexity": {"bits_per_byte,none": 4.7},
        },
        "n-samples": {
            "docstring_choice": {"original": 10, "effective": 10},
            "docstring_perplexity": {"original": 10, "effective": 10},
        },
    }
    rows = accuracy_intervals(results)
    assert [(r["metric"], r["right"], r["items"]) for r in rows] == [
        ("acc,none", 4, 10),
        ("acc_mutual_info,none", 6, 10),
    ]
    assert (rows[1]["low_95"], rows[1]["high_95"]) == pytest.approx(wilson_interval(6, 10))
