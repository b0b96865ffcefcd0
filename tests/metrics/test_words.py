"""diff_trainer.metrics.words: the word share of samples against a corpus, on a hand example."""

import math

from diff_trainer.metrics.words import corpus_words, word_share


def test_word_share_counts_tokens_found_in_the_corpus_by_hand():
    words = corpus_words(["Return the value.", "Create a\tnew  value"])
    assert words == {"Return", "the", "value.", "Create", "a", "new", "value"}
    # 8 tokens: "Return" "a" "value" "the" "the" are in the corpus; "valu", "the," and "return" (case) are not
    assert word_share(["Return a valu", "value the the,", " return the "], words) == 5 / 8


def test_word_share_of_samples_without_tokens_is_nan():
    assert math.isnan(word_share(["", "  \n"], {"a"}))
