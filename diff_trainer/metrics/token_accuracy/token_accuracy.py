"""Token accuracy: the fraction of predicted token ids equal to the reference ids (a local evaluate module)."""

import datasets
import evaluate
import numpy


class TokenAccuracy(evaluate.Metric):
    """Accuracy over flat lists of token ids; callers drop ignored (-100) positions first."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predicted token ids that equal the reference token ids.",
            citation="",
            inputs_description="predictions: list of int token ids; references: list of int token ids, same length.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions = numpy.asarray(predictions)
        references = numpy.asarray(references)
        if len(references) == 0:
            return {"accuracy": float("nan")}
        return {"accuracy": float((predictions == references).mean())}
