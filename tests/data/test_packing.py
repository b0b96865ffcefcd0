"""Packing labelled samples into block_size rows: concatenate-and-chunk, left and right padding."""

import numpy as np
import pytest

from diff_trainer.data.labels import IGNORE_INDEX as I
from diff_trainer.data.packing import append_eos, concatenate_and_chunk, pad_to_block

EOS = 1


def test_append_eos_inserts_one_trained_eos_per_sample():
    ids, labels, offsets = append_eos([[5, 6], [7]], [[I, 6], [7]], EOS)
    assert ids.tolist() == [5, 6, EOS, 7, EOS]
    assert labels.tolist() == [I, 6, EOS, 7, EOS]
    assert offsets.tolist() == [0, 3, 5]


def test_concatenate_and_chunk_drops_the_incomplete_remainder():
    out = concatenate_and_chunk([[5, 6, 7], [8, 9]], [[I, 6, 7], [8, 9]], block_size=3, eos_id=EOS)
    # stream: 5 6 7 EOS 8 9 EOS -> two rows of 3, the lone trailing EOS is dropped
    assert out["input_ids"].tolist() == [[5, 6, 7], [EOS, 8, 9]]
    assert out["labels"].tolist() == [[I, 6, 7], [EOS, 8, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]


def test_concatenate_shorter_than_one_block_gives_no_rows():
    out = concatenate_and_chunk([[5, 6]], [[5, 6]], block_size=4, eos_id=EOS)
    assert out["input_ids"].shape == (0, 4)


def test_left_padding_ignores_pads_and_trains_the_sample_eos():
    out = pad_to_block([[5, 6, 7]], [[I, 6, 7]], block_size=6, eos_id=EOS, side="left")
    assert out["input_ids"].tolist() == [[EOS, EOS, 5, 6, 7, EOS]]
    assert out["labels"].tolist() == [[I, I, I, 6, 7, EOS]]
    assert out["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1]]


def test_right_padding_trains_and_attends_the_eos_fill():
    out = pad_to_block([[5, 6, 7], [8]], [[I, 6, 7], [8]], block_size=5, eos_id=EOS, side="right")
    assert out["input_ids"].tolist() == [[5, 6, 7, EOS, EOS], [8, EOS, EOS, EOS, EOS]]
    assert out["labels"].tolist() == [[I, 6, 7, EOS, EOS], [8, EOS, EOS, EOS, EOS]]
    assert out["attention_mask"].tolist() == [[1] * 5, [1] * 5]


@pytest.mark.parametrize("side", ["left", "right"])
def test_sample_of_block_size_minus_one_fits_exactly(side):
    ids = list(range(10, 13))
    out = pad_to_block([ids], [ids], block_size=4, eos_id=EOS, side=side)
    assert out["input_ids"].tolist() == [ids + [EOS]]
    assert out["labels"].tolist() == [ids + [EOS]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1]]


def test_sample_of_block_size_is_refused_by_padding():
    with pytest.raises(ValueError, match="longer than block_size"):
        pad_to_block([[5, 6, 7, 8]], [[5, 6, 7, 8]], block_size=4, eos_id=EOS)


def test_random_padding_keeps_every_token_and_label_in_order():
    rng = np.random.default_rng(0)
    block = 9
    samples = [rng.integers(2, 50, size=int(rng.integers(0, block))).tolist() for _ in range(30)]
    labels = [[t if rng.random() < 0.5 else I for t in s] for s in samples]
    for side in ("left", "right"):
        out = pad_to_block(samples, labels, block, EOS, side)
        for row, (ids, labs) in enumerate(zip(samples, labels)):
            n = len(ids) + 1
            span = slice(block - n, block) if side == "left" else slice(0, n)
            assert out["input_ids"][row, span].tolist() == ids + [EOS]
            assert out["labels"][row, span].tolist() == labs + [EOS]
            assert out["attention_mask"][row].sum() == (n if side == "left" else block)
