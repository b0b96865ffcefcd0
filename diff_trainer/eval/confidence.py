"""Confidence intervals for accuracies over a task's items (each item right or wrong)."""

from __future__ import annotations

import math

# per-item right/wrong metrics of lm-evaluation-harness, whose mean over items is a binomial proportion
BINARY_METRICS = ("acc", "acc_norm", "acc_bytes", "acc_mutual_info", "exact_match")
Z_95 = 1.959964


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; z = 1.96 for 95%)."""
    if total < 1 or not 0 <= successes <= total:
        raise ValueError(f"wilson_interval: need 0 <= successes ({successes}) <= total ({total}) and total >= 1.")
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half_width = z / (1 + z * z / total) * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    return centre - half_width, centre + half_width


def accuracy_intervals(results: dict) -> list[dict]:
    """One row per (task, binary metric) of a harness results dict: items right, items, share, 95% interval."""
    rows = []
    for task, metrics in results["results"].items():
        total = results.get("n-samples", {}).get(task, {}).get("effective")
        if not total:
            continue
        for key, value in metrics.items():
            metric = key.split(",")[0]
            if metric in BINARY_METRICS and isinstance(value, float):
                successes = round(value * total)
                low, high = wilson_interval(successes, total)
                rows.append(
                    {
                        "task": task,
                        "metric": key,
                        "right": successes,
                        "items": total,
                        "share": value,
                        "low_95": low,
                        "high_95": high,
                    }
                )
    return rows
