"""The preprocessing pipeline: tokenise -> <DFF> labels -> filter -> pack or pad -> sanity check.

`Preprocessor.run` returns the rows and their `RowLayout` (packed / left- / right-padded, block size, marker,
tokenizer), which is saved next to the rows and read back when they are reused with --skip_concat.
"""

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from . import chat
from .labels import IGNORE_INDEX, dff_labels
from .loading import DataError, as_text_records
from .packing import concatenate_and_chunk, pad_to_block

logger = logging.getLogger(__name__)

ROW_COLUMNS = ("input_ids", "labels", "attention_mask")
DOCUMENT_COLUMN = "document_ids"  # packed conversations: each token's conversation (see packing.py)
LAYOUT_FILE = "row_layout.json"
DEFAULT_BLOCK_SIZE = 512
PACKINGS = ("packed", "left", "right")


def bos_prefix(tokenizer) -> list[int]:
    """The ids put before every text: [BOS] when the tokenizer has a BOS distinct from EOS, else none."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and bos != tokenizer.eos_token_id else []


def vocabulary_hash(tokenizer, size: int | None = None) -> str:
    """A short fingerprint of the token -> id mapping of the ids below `size` (default: all of them)."""
    size = len(tokenizer) if size is None else size
    items = sorted((token, index) for token, index in tokenizer.get_vocab().items() if index < size)
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RowLayout:
    """What the final rows are: how they were built and with which tokenizer.

    packing: "packed" (samples joined and cut), "left" (one sample per row, ignored padding on the left) or "right"
    (one sample per row, trained EOS filling the right). marker: the <DFF> token training starts after, or None
    when every token is trained. chat_template: for conversations, the template they were rendered with (a bundled
    name, a file, or "tokenizer" for the tokenizer's own); only assistant turns are trained.
    """

    packing: str
    block_size: int
    marker: str | None
    tokenizer_name: str
    vocab_size: int
    vocab_hash: str
    chat_template: str | None = None

    @property
    def packed(self) -> bool:
        return self.packing == "packed"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, directory: str) -> Optional["RowLayout"]:
        """The layout saved in `directory`, or None when it has none (data saved before layouts were recorded)."""
        path = os.path.join(directory, LAYOUT_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
        try:
            return cls(**values)
        except TypeError as error:
            raise DataError(f"{path}: not a row layout written by this project ({error}).") from error


def describe_tokenizer(tokenizer) -> dict:
    """The tokenizer fields of a RowLayout."""
    return {
        "tokenizer_name": tokenizer.name_or_path or type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_hash": vocabulary_hash(tokenizer),
    }


def tokenize_function(tokenizer, text_column: str):
    """Batched tokenisation without special tokens; `bos_prefix` goes before every text."""
    bos = bos_prefix(tokenizer)

    def tokenize(batch):
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [bos + row for row in ids]}

    return tokenize


def label_function(marker_ids: list[int] | None):
    """Batched labelling: <DFF> labels when `marker_ids` is given, else every token is trained."""

    def label(batch):
        if marker_ids is None:
            return {"labels": batch["input_ids"], "has_dff": [True] * len(batch["input_ids"])}
        labels, found = dff_labels(batch["input_ids"], marker_ids)
        return {"labels": labels, "has_dff": found.tolist()}

    return label


def pack_function(block_size: int, eos_id: int, concatenate: bool, padding_side: str, documents: bool = False):
    """Batched packing into block_size rows (see packing.py); `documents` records each token's sample when packed."""

    def pack(batch):
        if concatenate:
            return concatenate_and_chunk(batch["input_ids"], batch["labels"], block_size, eos_id, documents)
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

    def __init__(self, tokenizer, data_args, *, main_process_first=None):
        if tokenizer.eos_token_id is None:
            raise DataError("The tokenizer has no EOS token; set one (packing and padding use it).")
        self.tokenizer = tokenizer
        self.args = data_args
        self.main_process_first = main_process_first or (lambda desc: contextlib.nullcontext())
        self.workers = data_args.preprocessing_num_workers

    def run(self, raw: DatasetDict) -> tuple[DatasetDict, RowLayout]:
        """All steps, or with --skip_concat the rows as they are (checked against their saved layout)."""
        if self.args.skip_concat:
            layout = self.saved_layout(raw)
        else:
            conversations = self.chat_template_name(raw)
            if conversations:
                raw, marker = self.tokenize_conversations(raw), None
            else:
                raw, marker = self.label(self.tokenize(raw))
            block_size = self.args.block_size or DEFAULT_BLOCK_SIZE
            raw, concatenate = self.filter_samples(raw, block_size)
            raw = self.pack(raw, block_size, concatenate, documents=conversations is not None)
            layout = RowLayout(
                "packed" if concatenate else self.args.padding_side,
                block_size,
                marker,
                **describe_tokenizer(self.tokenizer),
                chat_template=conversations,
            )
        final = DatasetDict(
            {
                name: split.select_columns([c for c in (*ROW_COLUMNS, DOCUMENT_COLUMN) if c in split.column_names])
                for name, split in raw.items()
                if set(ROW_COLUMNS) <= set(split.column_names)
            }
            or raw
        )
        sanity_check(final, layout.block_size, self.tokenizer)
        trained = (
            f"on assistant turns (chat template {layout.chat_template})"
            if layout.chat_template
            else f"after {layout.marker}"
            if layout.marker
            else "on every token"
        )
        logger.info("Rows: %s, block size %d, trained %s.", layout.packing, layout.block_size, trained)
        return final, layout

    def chat_template_name(self, raw: DatasetDict) -> str | None:
        """For conversational records, the template's name as the layout records it; None for text."""
        if "input_ids" in raw["train"].column_names:
            return None
        if not chat.is_conversational(raw["train"].column_names, raw["train"][0], self.args.messages_column):
            return None
        return self.args.chat_template or "tokenizer"

    def tokenize_conversations(self, raw: DatasetDict) -> DatasetDict:
        """Render each conversation with the chat template into ids and assistant-turn labels (data/chat.py)."""
        text_flags = [
            flag
            for flag, used in (
                ("--dff_labels", self.args.dff_labels != "auto"),
                ("--force_label", self.args.force_label),
                ("--prompt_column", self.args.prompt_column is not None),
            )
            if used
        ]
        if text_flags:
            raise DataError(
                f"{', '.join(text_flags)} apply to text records; conversations are trained on their "
                "assistant turns as the chat template renders them (choose which with --multi_turn): "
                "drop the flag."
            )
        template = chat.resolve_template(self.tokenizer, self.args.chat_template)
        sources = {"train": self.args.train_file, "validation": self.args.validation_file}
        if self.args.validation_split_percentage and not self.args.validation_file:
            sources = {}  # records moved between splits: numbered within their split
        tokenized = {}
        for name, split in raw.items():
            columns, skipped = chat.chat_examples(
                split,
                self.tokenizer,
                template,
                mode=self.args.multi_turn,
                messages_column=self.args.messages_column,
                source=sources.get(name) or f"{name} split",
                invalid_records=self.args.invalid_records,
            )
            if skipped:
                logger.warning(
                    "%s: skipped %d of %d conversations with bad records (--invalid_records skip).",
                    name,
                    skipped,
                    len(split),
                )
            if not columns["input_ids"]:
                raise DataError(
                    f"The {name} split has no usable conversation; see the errors without --invalid_records skip."
                )
            tokenized[name] = Dataset.from_dict({**columns, "has_dff": [True] * len(columns["input_ids"])})
        first = tokenized["train"][0]
        logger.info(
            "First conversation, trained spans in [[ ]]: %r",
            chat.marked_text(self.tokenizer, first["input_ids"], first["labels"]),
        )
        return DatasetDict(tokenized)

    def saved_layout(self, raw: DatasetDict) -> RowLayout:
        """The layout saved with the rows (checked against the tokenizer and --block_size), or one read off them."""
        directory = self.args.dataset_name if self.args.load_from_disk else None
        layout = RowLayout.read(directory) if directory else None
        source = directory or "The rows"
        current = describe_tokenizer(self.tokenizer)
        if layout is not None and self.args.chat_template and self.args.chat_template != layout.chat_template:
            raise DataError(
                f"{source}: the rows were rendered with chat template {layout.chat_template}, not "
                f"--chat_template {self.args.chat_template}. Drop the flag or preprocess again."
            )
        if layout is None:
            first = raw["train"][0]
            packing = "packed" if all(first["attention_mask"]) else "left"
            layout = RowLayout(packing, len(first["input_ids"]), None, **current)
            logger.warning(
                "%s: no %s, so rows of %d tokens are taken as %s (saved by an older version; save them "
                "again with --save_final_dataset to record their layout).",
                source,
                LAYOUT_FILE,
                layout.block_size,
                packing,
            )
        # tokens added after the rows were made (e.g. the mask token) leave their ids valid
        if vocabulary_hash(self.tokenizer, layout.vocab_size) != layout.vocab_hash:
            raise DataError(
                f"{source}: the rows were tokenised with {layout.tokenizer_name} ({layout.vocab_size} "
                f"tokens), not with the tokenizer of this run, {current['tokenizer_name']} "
                f"({current['vocab_size']} tokens). Use that tokenizer (--tokenizer_name) or preprocess "
                "the text again without --skip_concat."
            )
        if self.args.block_size is not None and self.args.block_size != layout.block_size:
            raise DataError(
                f"{source}: the saved rows have block_size {layout.block_size}, not --block_size "
                f"{self.args.block_size}. Drop --block_size or preprocess again with it."
            )
        return layout

    def tokenize(self, raw: DatasetDict) -> DatasetDict:
        if "input_ids" in raw["train"].column_names:
            logger.info("Data already has input_ids: skipping tokenisation.")
            return raw
        raw = as_text_records(raw, self.args, self.args.dff_token)
        columns = raw["train"].column_names
        with self.main_process_first(desc="tokenising"):
            return raw.map(
                tokenize_function(self.tokenizer, self.args.text_column),
                batched=True,
                num_proc=self.workers,
                remove_columns=columns,
                desc="Tokenising",
            )

    def label(self, raw: DatasetDict) -> tuple[DatasetDict, str | None]:
        """Labelled samples and the marker training starts after (None: every token is trained)."""
        dff_token = self.args.dff_token
        if "labels" in raw["train"].column_names and not self.args.force_label:
            logger.info("Data already has labels: keeping them (pass --force_label to recompute).")
            kept = raw.map(lambda b: {"has_dff": [True] * len(b["labels"])}, batched=True, desc="Keeping labels")
            return kept, None
        marker = self.tokenizer.encode(dff_token, add_special_tokens=False)
        with self.main_process_first(desc="labelling"):
            labelled = raw.map(label_function(marker), batched=True, num_proc=self.workers, desc="Labelling")
        if resolve_dff_mode(self.args.dff_labels, labelled["train"]):
            return labelled, dff_token
        logger.info("No %s marker in the data: every token is trained.", dff_token)
        with self.main_process_first(desc="labelling"):
            return raw.map(label_function(None), batched=True, num_proc=self.workers, desc="Labelling"), None

    def filter_samples(self, raw: DatasetDict, block: int) -> tuple[DatasetDict, bool]:
        """Drop samples without <DFF> (counted, one logged); handle samples too long for one row.

        Returns the samples and whether they must be packed (--concatenate_texts, or forced by long samples).
        """
        concatenate = self.args.concatenate_texts
        for name in list(raw):
            split = raw[name]
            found = arrow_column(split, "has_dff").to_numpy(zero_copy_only=False).astype(bool)
            lengths = sequence_lengths(split)
            keep = found.copy()
            if not found.all():
                example = self.tokenizer.decode(split[int(np.flatnonzero(~found)[0])]["input_ids"][:200])
                logger.warning(
                    "%s: dropped %d of %d samples without %s, e.g. %r",
                    name,
                    int((~found).sum()),
                    len(found),
                    self.args.dff_token,
                    example,
                )
            too_long = lengths >= block
            if too_long[keep].any():
                if self.args.ignore_long_samples:
                    logger.warning(
                        "%s: dropped %d samples with length >= block_size %d (--ignore_long_samples).",
                        name,
                        int((too_long & keep).sum()),
                        block,
                    )
                    keep &= ~too_long
                elif not concatenate:
                    logger.warning(
                        "%s: %d samples are >= block_size %d tokens: packing them with "
                        "--concatenate_texts (pass --ignore_long_samples to drop them instead).",
                        name,
                        int((too_long & keep).sum()),
                        block,
                    )
                    concatenate = True
            if not keep.all():
                split = split.select(np.flatnonzero(keep))
            if len(split) == 0:
                raise DataError(
                    f"The {name} split is empty after filtering: no sample has {self.args.dff_token} "
                    f"or fits block_size {block}. Check --text_column, --dff_token and --block_size."
                )
            raw[name] = split
        return raw, concatenate

    def pack(self, raw: DatasetDict, block_size: int, concatenate: bool, documents: bool = False) -> DatasetDict:
        side = self.args.padding_side
        fn = pack_function(block_size, self.tokenizer.eos_token_id, concatenate, side, documents)
        how = "Packing" if concatenate else f"Padding ({side})"
        with self.main_process_first(desc="packing"):
            packed = raw.map(
                fn, batched=True, num_proc=self.workers, remove_columns=raw["train"].column_names, desc=how
            )
        for name in list(packed):
            trainable = trainable_counts(packed[name])
            if (trainable == 0).any():
                logger.warning("%s: dropped %d packed rows with no trained token.", name, int((trainable == 0).sum()))
                packed[name] = packed[name].select(np.flatnonzero(trainable > 0))
            if len(packed[name]) == 0:
                raise DataError(
                    f"The {name} split has no complete row of {block_size} tokens. Use a smaller "
                    f"--block_size or more {name} data{self.where_more_data_comes_from(name)}."
                )
        return packed

    def where_more_data_comes_from(self, split: str) -> str:
        """The flag that adds data to a validation split, as a parenthesis ("" for train or a hub split)."""
        if split != "validation":
            return ""
        if self.args.validation_file:
            return f" (a longer --validation_file {self.args.validation_file})"
        if self.args.dataset_name:
            return ""
        return f" (a larger --validation_split_percentage, now {self.args.validation_split_percentage:g})"


def label_matrix(dataset: Dataset) -> np.ndarray:
    """The labels column as one (rows, block) array (rows must have equal length; no rows: shape (0, 0))."""
    flat = pc.list_flatten(arrow_column(dataset, "labels")).to_numpy(zero_copy_only=False)
    return flat.reshape(len(dataset), -1) if len(dataset) else flat.reshape(0, 0)


def trainable_counts(dataset: Dataset) -> np.ndarray:
    """Number of labels != -100 in each row."""
    return (label_matrix(dataset) != IGNORE_INDEX).sum(axis=1)


def sanity_check(final: DatasetDict, block_size: int, tokenizer) -> None:
    """Stop with a clear message when the final rows cannot be trained on; log a decoded first sample."""
    for name, split in final.items():
        missing = [c for c in ROW_COLUMNS if c not in split.column_names]
        if missing:
            raise DataError(
                f"{name}: final data lacks column(s) {missing} (has {split.column_names}). "
                "Data saved without them cannot be used with --skip_concat."
            )
        if len(split) == 0:
            raise DataError(f"{name}: no rows left.")
        for column in ROW_COLUMNS:
            lengths = sequence_lengths(split, column)
            if (lengths != block_size).any():
                bad = int(np.flatnonzero(lengths != block_size)[0])
                raise DataError(
                    f"{name}: row {bad} has {lengths[bad]} {column}, expected block_size {block_size}. "
                    "Every row must have the same length: preprocess the text again."
                )
        empty = np.flatnonzero(trainable_counts(split) == 0)
        if len(empty):
            raise DataError(f"{name}: {len(empty)} rows have no trained label (first: row {empty[0]}).")
    first = final["train"][0]
    trained = [i for i, label in enumerate(first["labels"]) if label != IGNORE_INDEX]
    logger.info("First training row (decoded): %r", tokenizer.decode(first["input_ids"]))
    logger.info("Its first trained span: %r", tokenizer.decode(first["input_ids"][trained[0] : trained[0] + 64]))
