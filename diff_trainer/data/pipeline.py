"""The preprocessing pipeline: tokenise -> <DFF> labels -> filter -> pack or pad -> sanity check."""

import contextlib
import logging
from typing import Optional

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from .labels import IGNORE_INDEX, dff_labels
from .loading import DataError, as_text_records
from .packing import concatenate_and_chunk, pad_to_block

logger = logging.getLogger(__name__)

ROW_COLUMNS = ("input_ids", "labels", "attention_mask")


def tokenize_function(tokenizer, text_column: str):
    """Batched tokenisation without special tokens; BOS is prepended when the tokenizer has a distinct one."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id not in (None, tokenizer.eos_token_id) else None

    def tokenize(batch):
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [[bos] + row for row in ids] if bos is not None else ids}

    return tokenize


def label_function(marker_ids: Optional[list[int]]):
    """Batched labelling: <DFF> labels when `marker_ids` is given, else every token is trained."""

    def label(batch):
        if marker_ids is None:
            return {"labels": batch["input_ids"], "has_dff": [True] * len(batch["input_ids"])}
        labels, found = dff_labels(batch["input_ids"], marker_ids)
        return {"labels": labels, "has_dff": found.tolist()}

    return label


def pack_function(block_size: int, eos_id: int, concatenate: bool, padding_side: str):
    """Batched packing into block_size rows (see packing.py)."""

    def pack(batch):
        if concatenate:
            return concatenate_and_chunk(batch["input_ids"], batch["labels"], block_size, eos_id)
        return pad_to_block(batch["input_ids"], batch["labels"], block_size, eos_id, padding_side)

    return pack


def sequence_lengths(dataset: Dataset, column: str = "input_ids") -> np.ndarray:
    """Length of every row's list in `column`, read from Arrow without decoding rows."""
    return pc.list_value_length(arrow_column(dataset, column)).to_numpy(zero_copy_only=False)


def arrow_column(dataset: Dataset, column: str):
    """One column as a pyarrow array, honouring any selection (indices mapping) on the dataset."""
    return dataset.with_format("arrow")[column]


def resolve_dff_mode(mode: str, dataset: Dataset) -> bool:
    """'on'/'off' as given; 'auto' uses <DFF> labels when any training sample contains the marker."""
    if mode != "auto":
        return mode == "on"
    return bool(pc.any(arrow_column(dataset, "has_dff")).as_py())


class Preprocessor:
    """Runs the pipeline on a DatasetDict with the settings of DataArguments."""

    def __init__(self, tokenizer, data_args, *, dff_token: str, dff_mode: str = "auto",
                 main_process_first=None):
        if tokenizer.eos_token_id is None:
            raise DataError("The tokenizer has no EOS token; set one (packing and padding use it).")
        self.tokenizer = tokenizer
        self.args = data_args
        self.dff_token = dff_token
        self.dff_mode = dff_mode
        self.main_process_first = main_process_first or (lambda desc: contextlib.nullcontext())
        self.workers = data_args.preprocessing_num_workers
        self.concatenate = data_args.concatenate_texts

    def run(self, raw: DatasetDict) -> DatasetDict:
        """All steps; with --skip_concat the rows are taken as they are (only checked)."""
        if not self.args.skip_concat:
            raw = self.tokenize(raw)
            raw = self.label(raw)
            raw = self.filter_samples(raw)
            raw = self.pack(raw)
        final = DatasetDict({name: split.select_columns(list(ROW_COLUMNS)) for name, split in raw.items()
                             if set(ROW_COLUMNS) <= set(split.column_names)} or raw)
        sanity_check(final, self.args.block_size, self.tokenizer)
        return final

    def tokenize(self, raw: DatasetDict) -> DatasetDict:
        if "input_ids" in raw["train"].column_names:
            logger.info("Data already has input_ids: skipping tokenisation.")
            return raw
        raw = as_text_records(raw, self.args, self.dff_token)
        columns = raw["train"].column_names
        with self.main_process_first(desc="tokenising"):
            return raw.map(tokenize_function(self.tokenizer, self.args.text_column), batched=True,
                           num_proc=self.workers, remove_columns=columns, desc="Tokenising")

    def label(self, raw: DatasetDict) -> DatasetDict:
        if "labels" in raw["train"].column_names and not self.args.force_label:
            logger.info("Data already has labels: keeping them (pass --force_label to recompute).")
            return raw.map(lambda b: {"has_dff": [True] * len(b["labels"])}, batched=True, desc="Keeping labels")
        marker = self.tokenizer.encode(self.dff_token, add_special_tokens=False)
        with self.main_process_first(desc="labelling"):
            labelled = raw.map(label_function(marker), batched=True, num_proc=self.workers, desc="Labelling")
        self.use_dff = resolve_dff_mode(self.dff_mode, labelled["train"])
        if not self.use_dff:
            logger.info("No %s marker in the data: every token is trained.", self.dff_token)
            with self.main_process_first(desc="labelling"):
                labelled = raw.map(label_function(None), batched=True, num_proc=self.workers, desc="Labelling")
        return labelled

    def filter_samples(self, raw: DatasetDict) -> DatasetDict:
        """Drop samples without <DFF> (counted, one logged); handle samples too long for one row."""
        block = self.args.block_size
        for name in list(raw):
            split = raw[name]
            found = arrow_column(split, "has_dff").to_numpy(zero_copy_only=False).astype(bool)
            lengths = sequence_lengths(split)
            keep = found.copy()
            if not found.all():
                example = self.tokenizer.decode(split[int(np.flatnonzero(~found)[0])]["input_ids"][:200])
                logger.warning("%s: dropped %d of %d samples without %s, e.g. %r", name, int((~found).sum()),
                               len(found), self.dff_token, example)
            too_long = lengths >= block
            if too_long[keep].any():
                if self.args.ignore_long_samples:
                    logger.warning("%s: dropped %d samples with length >= block_size %d (--ignore_long_samples).",
                                   name, int((too_long & keep).sum()), block)
                    keep &= ~too_long
                elif not self.concatenate:
                    logger.warning("%s: %d samples are >= block_size %d tokens: packing them with "
                                   "--concatenate_texts (pass --ignore_long_samples to drop them instead).",
                                   name, int((too_long & keep).sum()), block)
                    self.concatenate = True
            if not keep.all():
                split = split.select(np.flatnonzero(keep))
            if len(split) == 0:
                raise DataError(f"The {name} split is empty after filtering: no sample has {self.dff_token} "
                                f"or fits block_size {block}. Check --text_column, --dff_token and --block_size.")
            raw[name] = split
        return raw

    def pack(self, raw: DatasetDict) -> DatasetDict:
        args = self.args
        fn = pack_function(args.block_size, self.tokenizer.eos_token_id, self.concatenate, args.padding_side)
        how = "Packing" if self.concatenate else f"Padding ({args.padding_side})"
        with self.main_process_first(desc="packing"):
            packed = raw.map(fn, batched=True, num_proc=self.workers, remove_columns=raw["train"].column_names,
                             desc=how)
        for name in list(packed):
            trainable = trainable_counts(packed[name])
            if (trainable == 0).any():
                logger.warning("%s: dropped %d packed rows with no trained token.", name, int((trainable == 0).sum()))
                packed[name] = packed[name].select(np.flatnonzero(trainable > 0))
            if len(packed[name]) == 0:
                raise DataError(f"The {name} split has no complete row of {args.block_size} tokens. "
                                "Use a smaller --block_size or more data.")
        return packed


def label_matrix(dataset: Dataset) -> np.ndarray:
    """The labels column as one (rows, block) array (rows must have equal length)."""
    flat = pc.list_flatten(arrow_column(dataset, "labels")).to_numpy(zero_copy_only=False)
    return flat.reshape(len(dataset), -1)


def trainable_counts(dataset: Dataset) -> np.ndarray:
    """Number of labels != -100 in each row."""
    return (label_matrix(dataset) != IGNORE_INDEX).sum(axis=1)


def sanity_check(final: DatasetDict, block_size: int, tokenizer) -> None:
    """Stop with a clear message when the final rows cannot be trained on; log a decoded first sample."""
    for name, split in final.items():
        missing = [c for c in ROW_COLUMNS if c not in split.column_names]
        if missing:
            raise DataError(f"{name}: final data lacks column(s) {missing} (has {split.column_names}). "
                            "Data saved without them cannot be used with --skip_concat.")
        if len(split) == 0:
            raise DataError(f"{name}: no rows left.")
        for column in ROW_COLUMNS:
            lengths = sequence_lengths(split, column)
            if (lengths != block_size).any():
                bad = int(np.flatnonzero(lengths != block_size)[0])
                raise DataError(f"{name}: row {bad} has {lengths[bad]} {column}, expected block_size {block_size}. "
                                "Re-run preprocessing with the same --block_size as the saved data.")
        empty = np.flatnonzero(trainable_counts(split) == 0)
        if len(empty):
            raise DataError(f"{name}: {len(empty)} rows have no trained label (first: row {empty[0]}).")
    first = final["train"][0]
    trained = [i for i, label in enumerate(first["labels"]) if label != IGNORE_INDEX]
    logger.info("First training row (decoded): %r", tokenizer.decode(first["input_ids"]))
    logger.info("Its first trained span: %r", tokenizer.decode(first["input_ids"][trained[0]: trained[0] + 64]))
