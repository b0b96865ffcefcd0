"""<DFF> labels: everything from the first marker on is trained, the context before it is ignored."""

import numpy as np
import pytest

from conftest import make_byte_tokenizer
from diff_trainer.data.labels import IGNORE_INDEX, dff_labels, first_marker_positions, flatten

MARKER = [7]


def reference_labels(sequences, marker):
    """Plain-Python labels: find the first marker inside each sequence, label from there on."""
    labels, found = [], []
    for ids in sequences:
        ids = list(ids)
        start = next((i for i in range(len(ids) - len(marker) + 1) if ids[i : i + len(marker)] == marker), None)
        found.append(start is not None)
        cut = len(ids) if start is None else start
        labels.append([IGNORE_INDEX] * cut + ids[cut:])
    return labels, found


def as_lists(labels):
    return [row.tolist() for row in labels]


def test_flatten_offsets():
    flat, offsets = flatten([[1, 2], [], [3, 4, 5]])
    assert flat.tolist() == [1, 2, 3, 4, 5]
    assert offsets.tolist() == [0, 2, 2, 5]


def test_marker_at_start_middle_and_end():
    sequences = [[7, 1, 2], [1, 7, 2], [1, 2, 7]]
    labels, found = dff_labels(sequences, MARKER)
    assert as_lists(labels) == [[7, 1, 2], [-100, 7, 2], [-100, -100, 7]]
    assert found.tolist() == [True, True, True]


def test_only_the_first_marker_counts():
    labels, found = dff_labels([[1, 7, 2, 7, 3]], MARKER)
    assert as_lists(labels) == [[-100, 7, 2, 7, 3]]
    assert first_marker_positions([[1, 7, 2, 7, 3]], MARKER).tolist() == [1]


def test_sequence_without_marker_trains_nothing():
    labels, found = dff_labels([[1, 2, 3], [4, 7]], MARKER)
    assert as_lists(labels) == [[-100, -100, -100], [-100, 7]]
    assert found.tolist() == [False, True]


def test_multi_token_marker_from_a_byte_tokenizer_without_dff():
    tokenizer = make_byte_tokenizer(dff=False)
    marker = tokenizer.encode("<DFF>", add_special_tokens=False)
    assert len(marker) == 5
    ids = tokenizer.encode("ab<DFF>cd", add_special_tokens=False)
    labels, found = dff_labels([ids], marker)
    assert found.tolist() == [True]
    assert as_lists(labels) == [[-100, -100] + ids[2:]]
    assert tokenizer.decode(labels[0][2:]) == "<DFF>cd"
    # a partial marker ("<DF") is not a marker
    partial = tokenizer.encode("ab<DF>cd", add_special_tokens=False)
    _, found = dff_labels([partial], marker)
    assert found.tolist() == [False]


def test_marker_split_across_two_samples_does_not_match():
    marker = [5, 6, 7]
    # the first sample ends with 5 6, the second starts with 7: the concatenation holds 5 6 7 across the boundary
    sequences = [[1, 5, 6], [7, 2, 3], [5, 6, 7, 9]]
    positions = first_marker_positions(sequences, marker)
    assert positions.tolist() == [-1, -1, 0]
    labels, found = dff_labels(sequences, marker)
    assert found.tolist() == [False, False, True]
    assert as_lists(labels)[:2] == [[-100] * 3, [-100] * 3]


def test_boundary_window_does_not_hide_a_later_real_marker():
    marker = [5, 6]
    # a window across the boundary (5 | 6) precedes the real marker at index 2 of the second sample
    assert first_marker_positions([[1, 5], [6, 0, 5, 6]], marker).tolist() == [-1, 2]


def test_empty_sequences_and_short_batches():
    assert first_marker_positions([[], [7], []], MARKER).tolist() == [-1, 0, -1]
    assert first_marker_positions([[5]], [5, 6]).tolist() == [-1]
    labels, found = dff_labels([[], [1, 7]], MARKER)
    assert as_lists(labels) == [[], [-100, 7]]
    assert found.tolist() == [False, True]


def test_empty_batch_gives_no_rows():
    labels, found = dff_labels([], MARKER)
    assert len(labels) == 0 and len(found) == 0


@pytest.mark.parametrize("marker", [[3], [3, 4], [3, 4, 3]])
def test_vectorised_labels_match_reference_on_random_data(marker):
    rng = np.random.default_rng(len(marker))
    for _ in range(50):
        count = int(rng.integers(1, 12))
        # a tiny alphabet so markers (and partial markers at boundaries) are frequent
        sequences = [rng.integers(0, 6, size=int(rng.integers(0, 15))).tolist() for _ in range(count)]
        labels, found = dff_labels(sequences, marker)
        expected_labels, expected_found = reference_labels(sequences, marker)
        assert as_lists(labels) == expected_labels
        assert found.tolist() == expected_found
