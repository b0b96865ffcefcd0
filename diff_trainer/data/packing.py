"""Turn labelled samples into block_size rows: concatenate-and-chunk, or pad each sample.

Every sample is followed by one EOS that is trained (label = EOS) and attended, so the model learns where a
sample ends. With packing these EOS tokens separate documents inside a row; attention is not blocked across
them (as in run_clm and LLaDA pretraining). Samples that contain EOS themselves (conversations whose template ends
turns with it) are packed with `document_ids`, the index of each token's sample, recorded from the sample lengths.
"""

import numpy as np

from .labels import IGNORE_INDEX, flatten


def append_eos(input_ids, labels, eos_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate samples each followed by a trained EOS: (flat ids, flat labels, offsets)."""
    ids, offsets = flatten(input_ids)
    flat_labels, _ = flatten(labels)
    ends = offsets[1:]
    ids = np.insert(ids, ends, eos_id)
    flat_labels = np.insert(flat_labels, ends, eos_id)
    return ids, flat_labels, offsets + np.arange(len(offsets))


def concatenate_and_chunk(input_ids, labels, block_size: int, eos_id: int, documents: bool = False) -> dict:
    """Pack samples (each + EOS) into rows of block_size; the incomplete remainder is dropped (as run_clm).

    `documents`: add a `document_ids` column, the index (within the batch) of the sample each token belongs to.
    """
    ids, flat_labels, offsets = append_eos(input_ids, labels, eos_id)
    rows = len(ids) // block_size
    columns = {"input_ids": ids, "labels": flat_labels}
    if documents:
        columns["document_ids"] = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    columns = {name: flat[: rows * block_size].reshape(rows, block_size) for name, flat in columns.items()}
    return {**columns, "attention_mask": np.ones_like(columns["input_ids"])}


def pad_to_block(input_ids, labels, block_size: int, eos_id: int, side: str = "left") -> dict:
    """One row per sample (+ EOS), padded with EOS to block_size.

    side='left': padding is ignored (attention 0, label -100), the seed workflow.
    side='right': padding is attended and trained as EOS (LLaDA SFT: the model learns to emit EOS to the end).
    """
    ids, flat_labels, offsets = append_eos(input_ids, labels, eos_id)
    lengths = np.diff(offsets)
    if (lengths > block_size).any():
        raise ValueError(f"A sample plus EOS is longer than block_size={block_size}; filter long samples first.")
    rows = len(lengths)
    out_ids = np.full((rows, block_size), eos_id, dtype=np.int64)
    out_labels = np.full((rows, block_size), IGNORE_INDEX if side == "left" else eos_id, dtype=np.int64)
    attention = (
        np.zeros((rows, block_size), dtype=np.int64) if side == "left" else np.ones((rows, block_size), np.int64)
    )
    owner = np.repeat(np.arange(rows), lengths)
    within = np.arange(len(ids)) - offsets[owner]
    column = within + (block_size - lengths[owner] if side == "left" else 0)
    out_ids[owner, column] = ids
    out_labels[owner, column] = flat_labels
    attention[owner, column] = 1
    return {"input_ids": out_ids, "labels": out_labels, "attention_mask": attention}
