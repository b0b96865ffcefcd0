"""Word share: how much of a generated text is made of words that occur in the training text."""

from collections.abc import Iterable


def corpus_words(texts: Iterable[str]) -> set[str]:
    """Every whitespace-separated token of `texts`, exactly as written (case and punctuation kept)."""
    return {word for text in texts for word in text.split()}


def word_share(samples: Iterable[str], words: set[str]) -> float:
    """The share of the samples' whitespace-separated tokens that are in `words`; NaN when the samples have none."""
    tokens = [token for sample in samples for token in sample.split()]
    return sum(token in words for token in tokens) / len(tokens) if tokens else float("nan")
