"""diff_trainer.metrics.words: the word share of samples against a corpus and the token F1 of a reply, on hand
examples."""

import math

import pytest

from diff_trainer.metrics.words import corpus_words, token_f1, word_share


def test_word_share_counts_tokens_found_in_the_corpus_by_hand():
    words = corpus_words(["Return the value.", "Create a\tnew  value"])
    assert words == {"Return", "the", "value.", "Create", "a", "new", "value"}
    # 8 tokens: "Return" "a" "value" "the" "the" are in the corpus; "valu", "the," and "return" (case) are not
    assert word_share(["Return a valu", "value the the,", " return the "], words) == 5 / 8


def test_word_share_of_samples_without_tokens_is_nan():
    assert math.isnan(word_share(["", "  \n"], {"a"}))


def test_token_f1_by_hand():
    # prediction 4 tokens, reference 3; common: "Return" and one "the" -> precision 2/4, recall 2/3, F1 = 4/7
    assert token_f1("Return the the path", "Return the value") == pytest.approx(4 / 7)
    assert token_f1("Return the value.", "Return the value.") == 1.0
    assert token_f1("return", "Return") == 0.0  # tokens as written: case counts
    assert token_f1("", "  ") == 1.0 and token_f1("", "a") == 0.0 and token_f1("a", "") == 0.0
    assert token_f1("a b", "b a") == 1.0  # order does not count
    # repeats count as often as both texts hold them: common 2 of "a a" in "a a b", P 1, R 2/3, F1 0.8
    assert token_f1("a a", "a a b") == pytest.approx(0.8)
