"""Load raw text into a DatasetDict with `train` and `validation` splits."""

import gzip
import io
import json
import logging
import os
from typing import Optional

import datasets
from datasets import DatasetDict

logger = logging.getLogger(__name__)

# file suffix -> datasets' packaged builder
BUILDERS = {
    ".jsonl.zst": "json",
    ".json.zst": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".jsonl": "json",
    ".json": "json",
    ".txt": "text",
    ".txt.gz": "text",
    ".txt.zst": "text",
    ".csv": "csv",
    ".parquet": "parquet",
}


class DataError(ValueError):
    """Input data that cannot be used, with a message saying where and what to do."""


def builder_for(path: str) -> str:
    """The datasets builder that reads `path`, chosen by its suffix."""
    for suffix, builder in BUILDERS.items():
        if path.endswith(suffix):
            return builder
    raise DataError(f"{path}: unsupported file type; use one of {', '.join(BUILDERS)}.")


def open_text(path: str):
    """Open a possibly gzip/zstd-compressed text file for reading line by line."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.endswith(".zst"):
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8")
    return open(path, encoding="utf-8")


def find_bad_json_line(path: str) -> Optional[tuple[int, str]]:
    """First line of a JSON-lines file that is not a JSON object: (line number, parser message), or None."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                return number, str(error)
            if not isinstance(record, dict):
                return number, f"expected a JSON object, got {type(record).__name__}"
    return None


def load_files(data_files: dict[str, str], cache_dir: Optional[str] = None) -> DatasetDict:
    """Load local files (one per split); a malformed JSON line is reported with its file and line number."""
    for path in data_files.values():
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found. Check --train_file/--validation_file.")
    builders = {builder_for(path) for path in data_files.values()}
    if len(builders) > 1:
        raise DataError(f"Train and validation files must have the same format, got {sorted(builders)}.")
    builder = builders.pop()
    kwargs = {"keep_linebreaks": True} if builder == "text" else {}
    try:
        return datasets.load_dataset(builder, data_files=data_files, cache_dir=cache_dir, **kwargs)
    except Exception as error:
        if builder == "json":
            for path in data_files.values():
                if path.endswith((".json", ".json.gz", ".json.zst")) and is_json_document(path):
                    continue
                bad = find_bad_json_line(path)
                if bad:
                    raise DataError(
                        f"{path}, line {bad[0]}: malformed JSON ({bad[1]}). Fix or remove that line."
                    ) from error
        raise DataError(f"Could not read {', '.join(data_files.values())}: {error}") from error


def is_json_lines(path: str) -> bool:
    """True for a JSON-lines file (by suffix, or a .json file that is not one JSON document)."""
    if builder_for(path) != "json":
        return False
    return path.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")) or not is_json_document(path)


def is_json_document(path: str) -> bool:
    """True when the file is one JSON document (a list or an object), not JSON lines."""
    with open_text(path) as handle:
        try:
            json.load(handle)
            return True
        except json.JSONDecodeError:
            return False


def load_saved(path: str) -> DatasetDict:
    """Load a `save_to_disk` directory; a bare Dataset becomes the train split."""
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a directory written by save_to_disk (--load_from_disk).")
    loaded = datasets.load_from_disk(path)
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def load_raw_datasets(data_args, cache_dir: Optional[str] = None, seed: int = 42) -> DatasetDict:
    """Load train and validation splits from the hub, local files or a saved directory (see DataArguments)."""
    if data_args.load_from_disk:
        raw = load_saved(data_args.dataset_name)
    elif data_args.dataset_name:
        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    elif data_args.train_file:
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        raw = load_files(files, cache_dir)
    else:
        raise DataError("No data given: pass --train_file, or --dataset_name (with --load_from_disk for a saved dir).")
    if not isinstance(raw, DatasetDict):
        raw = DatasetDict({"train": raw})
    if "train" not in raw:
        raise DataError(f"The dataset has no 'train' split (found: {', '.join(raw) or 'none'}). Rename or pick a split.")
    if "validation" not in raw and data_args.validation_split_percentage > 0:
        split = raw["train"].train_test_split(test_size=data_args.validation_split_percentage / 100, seed=seed)
        raw = DatasetDict({**raw, "train": split["train"], "validation": split["test"]})
    raw = DatasetDict({name: raw[name] for name in ("train", "validation") if name in raw})
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for name, limit in limits.items():
        if name in raw and limit is not None:
            raw[name] = raw[name].select(range(min(limit, len(raw[name]))))
    if len(raw["train"]) == 0:
        raise DataError("The train split is empty.")
    return raw


def as_text_records(raw: DatasetDict, data_args, dff_token: str) -> DatasetDict:
    """Check the text column exists; with prompt/response columns, build `prompt<DFF>response` text."""
    columns = raw["train"].column_names
    if data_args.prompt_column:
        missing = [c for c in (data_args.prompt_column, data_args.response_column) if c not in columns]
        if missing:
            raise DataError(f"Column(s) {missing} not in the data; available columns: {columns}.")

        def join(batch):
            prompts, responses = batch[data_args.prompt_column], batch[data_args.response_column]
            return {data_args.text_column: [f"{p}{dff_token}{r}" for p, r in zip(prompts, responses)]}

        return raw.map(join, batched=True, desc="Joining prompt and response")
    if "input_ids" not in columns and data_args.text_column not in columns:
        raise DataError(
            f"Text column {data_args.text_column!r} not in the data; available columns: {columns}. "
            "Pass --text_column (or --prompt_column/--response_column)."
        )
    return raw
