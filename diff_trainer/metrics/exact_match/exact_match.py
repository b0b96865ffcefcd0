"""Exact match: the fraction of predicted strings equal to their reference once surrounding whitespace is stripped
(a local evaluate module)."""

import datasets
import evaluate
import numpy


class ExactMatch(evaluate.Metric):
    """Exact string match after `str.strip()` on both sides; NaN when there is nothing to compare.

    `return_matches=True` also returns the per-pair booleans under "matches".
    """

    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions that equal their reference after stripping surrounding whitespace.",
            citation="",
            inputs_description="predictions: list of str; references: list of str, same length; "
            "return_matches: bool, also return one boolean per pair.",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, return_matches=False):
        matches = numpy.array([p.strip() == r.strip() for p, r in zip(predictions, references)], dtype=bool)
        result = {"exact_match": float(matches.mean()) if len(matches) else float("nan")}
        if return_matches:
            result["matches"] = matches.tolist()
        return result
