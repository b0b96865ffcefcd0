"""Evaluation metrics computed from argmax predictions (local evaluate modules: no hub access needed)."""

import math
import os

from ..data.labels import IGNORE_INDEX

TOKEN_ACCURACY_MODULE = os.path.join(os.path.dirname(__file__), "token_accuracy")


def load_token_accuracy():
    """The local token-accuracy evaluate module."""
    import evaluate

    return evaluate.load(TOKEN_ACCURACY_MODULE)


def argmax_logits(logits, labels):
    """`preprocess_logits_for_metrics`: keep only argmax ids, so evaluation never stores full logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def token_accuracy_metrics(shift: bool):
    """`compute_metrics` for token accuracy over labels != -100 (shift=True: logits at i predict label i+1)."""
    metric = load_token_accuracy()

    def compute(eval_pred):
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        if shift:
            predictions, labels = predictions[:, :-1], labels[:, 1:]
        keep = labels != IGNORE_INDEX
        return metric.compute(predictions=predictions[keep].reshape(-1), references=labels[keep].reshape(-1))

    return compute


def add_perplexity(metrics: dict, loss_key: str = "eval_loss", name: str = "perplexity") -> dict:
    """exp(loss) next to the loss, inf when it overflows."""
    if loss_key in metrics:
        try:
            metrics[name] = math.exp(metrics[loss_key])
        except OverflowError:
            metrics[name] = float("inf")
    return metrics
