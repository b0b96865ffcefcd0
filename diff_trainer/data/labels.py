"""Labels from the `<DFF>` marker: context before the first marker is ignored (-100), the rest is trained."""

import numpy as np

IGNORE_INDEX = -100


def flatten(sequences) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate variable-length sequences: (flat int64 array, offsets of length n+1)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if len(sequences) else np.zeros(0, np.int64)
    )
    return flat, offsets


def first_marker_positions(sequences, marker_ids: list[int]) -> np.ndarray:
    """Index (within each sequence) of the first occurrence of `marker_ids`, or -1 when absent.

    Vectorised over the whole batch: one sliding-window comparison on the concatenated ids, windows that cross
    a sequence boundary discarded.
    """
    flat, offsets = flatten(sequences)
    width = len(marker_ids)
    result = np.full(len(sequences), -1, dtype=np.int64)
    if width == 0 or len(flat) < width:
        return result
    windows = np.lib.stride_tricks.sliding_window_view(flat, width)
    starts = np.flatnonzero((windows == np.asarray(marker_ids, dtype=np.int64)).all(axis=1))
    owner = np.searchsorted(offsets, starts, side="right") - 1
    inside = starts + width <= offsets[owner + 1]
    starts, owner = starts[inside], owner[inside]
    # starts are sorted, so the first index of each owner is that sequence's first marker
    owners, first = np.unique(owner, return_index=True)
    result[owners] = starts[first] - offsets[owners]
    return result


def dff_labels(sequences, marker_ids: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Labels for each sequence: -100 before the first marker, the ids from the marker on.

    Returns the labels and a boolean array saying which sequences contain the marker (those without get
    all -100 labels).
    """
    flat, offsets = flatten(sequences)
    positions = first_marker_positions(sequences, marker_ids)
    found = positions >= 0
    lengths = np.diff(offsets)
    # absolute start of the trained span; sequences without a marker train nothing
    trained_from = offsets[:-1] + np.where(found, positions, lengths)
    position_in_flat = np.arange(len(flat))
    owner = np.repeat(np.arange(len(sequences)), lengths)
    labels = np.where(position_in_flat >= trained_from[owner], flat, IGNORE_INDEX)
    rows = np.split(labels, offsets[1:-1]) if len(sequences) else []  # np.split of nothing gives one empty row
    return rows, found
