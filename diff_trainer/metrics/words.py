"""Word share: how much of a generated text is made of words that occur in the training text; token F1 of a reply
against the expected one."""

from collections import Counter
from collections.abc import Iterable


def corpus_words(texts: Iterable[str]) -> set[str]:
    """Every whitespace-separated token of `texts`, exactly as written (case and punctuation kept)."""
    return {word for text in texts for word in text.split()}


def word_share(samples: Iterable[str], words: set[str]) -> float:
    """The share of the samples' whitespace-separated tokens that are in `words`; NaN when the samples have none."""
    tokens = [token for sample in samples for token in sample.split()]
    return sum(token in words for token in tokens) / len(tokens) if tokens else float("nan")


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's F1 of two texts over their whitespace-separated tokens as written: the harmonic mean of the shares of
    each text's tokens (counted with multiplicity) that the other holds; 1 when both are empty."""
    predicted, expected = Counter(prediction.split()), Counter(reference.split())
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((predicted & expected).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(predicted.values()), common / sum(expected.values())
    return 2 * precision * recall / (precision + recall)
