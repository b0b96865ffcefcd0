"""Load raw text into a DatasetDict with `train` and `validation` splits."""

import gzip
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence

import datasets
import numpy as np
import pyarrow.compute as pc
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
STRING = datasets.Value("string")  # the feature type of every text column


class DataError(ValueError):
    """Input data that cannot be used, with a message saying where and what to do."""


POSITION_LIMITS = ("max_position_embeddings", "n_positions")


def check_block_size(block_size: int, config) -> None:
    """--block_size must fit the model's positions (an index error at step 1 otherwise)."""
    limit = next((getattr(config, name) for name in POSITION_LIMITS if getattr(config, name, None)), None)
    if limit is not None and block_size > limit:
        raise DataError(
            f"--block_size {block_size} is larger than the model's {limit} positions; pass --block_size "
            f"{limit} or less (or raise max_position_embeddings in --config_overrides for a new model)."
        )


def builder_for(path: str) -> str:
    """The datasets builder that reads `path`, chosen by its suffix."""
    for suffix, builder in BUILDERS.items():
        if path.endswith(suffix):
            return builder
    raise DataError(f"{path}: unsupported file type; use one of {', '.join(BUILDERS)}.")


TEXT_ENCODING = "utf-8-sig"  # UTF-8, with a byte-order mark at the start of a file dropped (as CSV readers do)
BYTE_ORDER_MARK = "\ufeff"


def open_text(path: str):
    """Open a possibly gzip/zstd-compressed text file for reading line by line."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding=TEXT_ENCODING)
    if path.endswith(".zst"):
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding=TEXT_ENCODING)
    return open(path, encoding=TEXT_ENCODING)


def decompressed_chunks(path: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The file's bytes, decompressed for .gz/.zst; a DataError when the compressed stream ends early."""
    with open(path, "rb") as raw:
        if path.endswith(".gz"):
            try:
                with gzip.open(raw) as handle:
                    while chunk := handle.read(chunk_size):
                        yield chunk
            except (EOFError, gzip.BadGzipFile) as error:
                raise DataError(
                    f"{path}: truncated or corrupt gzip file ({error}). Download or compress it again."
                ) from error
            return
        if not path.endswith(".zst"):
            while chunk := raw.read(chunk_size):
                yield chunk
            return
        import zstandard

        frame, fed = zstandard.ZstdDecompressor().decompressobj(), False
        try:
            while chunk := raw.read(chunk_size):
                while chunk:
                    fed = True
                    yield frame.decompress(chunk)
                    chunk = frame.unused_data if frame.eof else b""
                    if frame.eof:  # a multi-frame file: the next frame starts in the unused bytes
                        frame, fed = zstandard.ZstdDecompressor().decompressobj(), bool(chunk)
        except zstandard.ZstdError as error:
            raise DataError(f"{path}: corrupt zstd data ({error}). Download or compress it again.") from error
        if fed and not frame.eof:
            raise DataError(
                f"{path}: truncated zstd file (the last frame is incomplete; `zstd -t` says "
                "'premature end'). Download or compress it again."
            )


def numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line; a DataError naming the line when it is not valid UTF-8."""
    pending, number = b"", 0
    for chunk in decompressed_chunks(path):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            number += 1
            yield number, decode_line(path, number, line)
    if pending:
        yield number + 1, decode_line(path, number + 1, pending)


def decode_line(path: str, number: int, line: bytes) -> str:
    """One line as text (a byte-order mark before line 1 dropped); a DataError naming the file, line and byte when it
    is not UTF-8."""
    try:
        return line.decode(TEXT_ENCODING if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        bad = line[error.start : error.start + 4]
        raise DataError(
            f"{path}, line {number}: not valid UTF-8 (byte {error.start}: {bad!r}). "
            "Re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None


def value_problem(record: dict, column: str) -> str | None:
    """Why `record[column]` is not usable text (None when it is a string)."""
    if column not in record:
        return f"missing key {column!r}"
    value = record[column]
    if value is None:
        return f"{column!r} is null"
    if not isinstance(value, str):
        return f"{column!r} is a {type(value).__name__}, not a string"
    return None


def scan_file(path: str, text_columns: Sequence[str] = ()) -> dict[int, tuple[str, str]]:
    """Read a local file once before datasets does: truncation, invalid UTF-8, malformed JSON and an empty file
    are DataErrors; returns row -> ("file, line N", problem) for JSON records whose text columns are not strings.

    A column that no record has is left to the column check (pre-tokenised data has none).
    """
    records, places = read_records(path)
    builder = builder_for(path)
    if not places or (builder == "csv" and len(places) == 1):
        raise DataError(f"{path}: no records (the file is empty{' or holds only a header' * (len(places) == 1)}).")
    problems = {}
    for column in text_columns:
        found = {row: value_problem(record, column) for row, record in enumerate(records) if isinstance(record, dict)}
        if all(problem == f"missing key {column!r}" for problem in found.values()):
            continue  # the column check names a column missing from all the data
        for row, problem in found.items():
            if problem:
                problems.setdefault(row, (places[row], problem))
    return problems


def read_records(path: str) -> tuple[list, list[str]]:
    """The records of a JSON file (none for other files) and the place ("file, line N") of every row.

    Rows of a JSON-lines file are its non-blank lines, as datasets reads them; rows of a JSON document are its list
    items. Malformed JSON and a key given twice in a record are DataErrors naming the place.
    """
    builder = builder_for(path)
    json_lines = builder == "json" and is_json_lines(path)
    records, places = [], []
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        places.append(f"{path}, line {number}")
        if json_lines:
            records.append(parse_record(line, places[-1]))
    if builder == "json" and not json_lines:
        try:
            text = "".join(line + "\n" for _, line in numbered_lines(path))
            document = json.loads(text, object_pairs_hook=unique_keys)
        except KeyGivenTwice as error:
            raise DataError(f"{path}: {error}") from None
        if not isinstance(document, list):
            raise DataError(f"{path}: {not_records(document)}")
        records, places = document, [f"{path}, record {row + 1}" for row in range(len(document))]
        for place, record in zip(places, records):
            check_surrogates(record, place)
    return records, places


def not_records(document) -> str:
    """What a JSON document that is not a list of records holds, and what to write instead."""
    instead = 'Write one record per line (JSON lines: {"text": "..."}) or a list of records ([{"text": "..."}, ...]).'
    if isinstance(document, dict) and document and all(isinstance(value, list) for value in document.values()):
        keys = ", ".join(repr(key) for key in list(document)[:5])
        return f"holds a dict of columns ({keys}: lists of values), not records. {instead}"
    if isinstance(document, dict):
        return f"holds a single JSON object, not a list of records. {instead}"
    return f"holds a JSON {type(document).__name__}, not records. {instead}"


SURROGATE = re.compile(r"[\ud800-\udfff]")


def check_surrogates(value, place: str, key: str | None = None) -> None:
    """A DataError naming the place and key of a string holding a lone UTF-16 surrogate (an unpaired `\\ud800`-style
    escape): it is not text, datasets' reader fails on it in a JSON-lines file and drops it from a JSON document."""
    if isinstance(value, str) and SURROGATE.search(value):
        where = f" in {key!r}" if key is not None else ""
        raise DataError(
            f"{place}: a \\u escape{where} is half of a UTF-16 surrogate pair (a lone surrogate), which is not text. "
            "Fix the escape (a character outside the BMP takes two: \\ud83d\\ude00) or remove that record."
        )
    if isinstance(value, dict):
        for inner_key, inner in value.items():
            check_surrogates(inner, place, inner_key if key is None else key)
    elif isinstance(value, list):
        for inner in value:
            check_surrogates(inner, place, key)


class KeyGivenTwice(ValueError):
    """A JSON object that gives one key twice."""


def unique_keys(pairs: list) -> dict:
    """A JSON object's pairs as a dict; KeyGivenTwice when a key repeats (json keeps the last value, datasets the
    first, so the text trained would depend on the reader)."""
    keys = [key for key, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise KeyGivenTwice(f"key {twice!r} is given twice in a record. Keep one of the two values.")
    return dict(pairs)


def parse_record(line: str, place: str) -> dict:
    """One JSON-lines record; a DataError naming its place when it is not a JSON object or gives a key twice."""
    try:
        record = json.loads(line, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        raise DataError(f"{place}: malformed JSON ({error}). Fix or remove that line.") from None
    except KeyGivenTwice as error:
        raise DataError(f"{place}: {error}") from None
    if not isinstance(record, dict):
        raise DataError(
            f"{place}: malformed JSON (expected a JSON object, got {type(record).__name__}). Fix or remove that line."
        )
    if "\\u" in line:  # only an escape can make a lone surrogate (the line decoded as UTF-8)
        check_surrogates(record, place)
    return record


def load_files(
    data_files: dict[str, str], cache_dir: str | None = None, text_columns: Sequence[str] = ()
) -> tuple[DatasetDict, dict[str, dict[int, tuple[str, str]]]]:
    """Load local files (one per split), reading `text_columns` as exactly the strings written (no type guessing).

    Returns the splits and, per split, row -> ("file, line N", problem) for records whose text is missing, null or
    not a string. Unreadable files (truncated, not UTF-8, malformed JSON, empty) raise a DataError naming them.
    """
    for path in data_files.values():
        if os.path.isdir(path):
            raise DataError(
                f"{path}: is a directory, not a data file. Pass a file, or a save_to_disk directory with "
                "--dataset_name DIR --load_from_disk."
            )
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found. Check --train_file/--validation_file.")
    builders = {builder_for(path) for path in data_files.values()}
    if len(builders) > 1:
        raise DataError(f"Train and validation files must have the same format, got {sorted(builders)}.")
    builder = builders.pop()
    problems = {
        split: scan_file(path, text_columns) if builder != "parquet" else {} for split, path in data_files.items()
    }
    kwargs = {"keep_linebreaks": True} if builder == "text" else {}
    if builder == "csv":  # every CSV field is text; only an empty field is missing ("NA", "null" stay text)
        kwargs = {"features": csv_string_features(data_files["train"]), "keep_default_na": False, "na_values": [""]}
    raw = DatasetDict(
        {split: read_split(builder, split, path, cache_dir, text_columns, kwargs) for split, path in data_files.items()}
    )
    for split, path in data_files.items():
        for row, problem in null_text_rows(raw[split], text_columns).items():
            problems[split].setdefault(row, (f"{path}, record {row + 1}", problem))
    return raw, problems


def read_split(builder: str, split: str, path: str, cache_dir, text_columns: Sequence[str], kwargs: dict):
    """One file read by datasets' `builder`, its text columns as written; a DataError naming the file (and the line,
    when datasets names a row) when datasets cannot read it."""
    try:
        loaded = datasets.load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir, **kwargs)
        guessed = [column for column in text_columns if column in loaded.features and loaded.features[column] != STRING]
        if builder == "json" and guessed:  # a non-string value made datasets type the column: take it as written
            loaded = strings_as_written(loaded, path, guessed)
        return without_byte_order_mark(loaded) if builder == "text" else loaded
    except DataError:
        raise
    except Exception as error:
        raise DataError(read_failure(error, path, builder)) from error


ROW_IN_MESSAGE = re.compile(r",? *(?:in|at|starting at) (row|line) (\d+)")
JSON_CHUNK = 10 << 20  # datasets reads JSON lines in blocks of this many bytes and counts rows from a block's start


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then the exception it was raised from or during, and so on to the innermost."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def read_failure(error: Exception, path: str, builder: str) -> str:
    """One line for an error datasets raised reading `path`: the innermost cause, at the file's 1-based line when the
    cause names a row (pyarrow's JSON rows are 0-based among non-blank lines, pandas' CSV rows 0-based lines)."""
    *_, error = exception_chain(error)
    message = str(error).removeprefix("JSON parse error: ").strip()
    found = ROW_IN_MESSAGE.search(message)
    place = path
    if found and builder == "csv":
        place = f"{path}, line {int(found.group(2)) + (found.group(1) == 'row')}"
    elif (
        found
        and found.group(1) == "row"
        and builder == "json"
        and (not is_json_lines(path) or os.path.getsize(path) <= JSON_CHUNK)
    ):
        places = read_records(path)[1]
        place = places[int(found.group(2))] if int(found.group(2)) < len(places) else path
    if place != path:
        message = ROW_IN_MESSAGE.sub("", message, count=1)
    advice = "Quote fields that hold commas, quotes or line breaks" if builder == "csv" else "Fix or remove it"
    return f"{place}: datasets cannot read this ({message}). {advice}."


def strings_as_written(split, path: str, columns: Sequence[str]):
    """`split` with `columns` replaced by the file's own strings (None where a record holds no string there).

    datasets re-encodes every value of a column it typed as numbers or JSON (a string comes back with its quotes), so
    the values are taken from the file itself; the records without a string are named by scan_file.
    """
    records, _ = read_records(path)
    for column in columns:
        values = [record.get(column) if isinstance(record.get(column), str) else None for record in records]
        order = split.column_names
        split = split.add_column(f"{column}.as_written", values, feature=STRING).remove_columns(column)
        split = split.rename_column(f"{column}.as_written", column).select_columns(order)
    return split


def without_byte_order_mark(split):
    """A text split whose first line does not start with a UTF-8 byte-order mark (datasets keeps it as text)."""
    if len(split) == 0 or not split[0]["text"].startswith(BYTE_ORDER_MARK):
        return split

    def drop(batch, rows):
        return {"text": [t.removeprefix(BYTE_ORDER_MARK) if r == 0 else t for t, r in zip(batch["text"], rows)]}

    return split.map(drop, with_indices=True, batched=True, desc="Dropping the byte-order mark")


def csv_string_features(path: str) -> datasets.Features:
    """Every column of a CSV file (named by its header) as a string column."""
    import pandas as pd

    with open_text(path) as handle:
        header = pd.read_csv(handle, nrows=0).columns
    return datasets.Features(dict.fromkeys(header, STRING))


def null_text_rows(split, text_columns: Sequence[str]) -> dict[int, str]:
    """Row -> problem for null values in the text columns; a DataError for a text column that is not text."""
    problems = {}
    for column in text_columns:
        if column not in split.column_names:
            continue
        if split.features[column] not in (STRING, datasets.Value("large_string")):
            raise DataError(
                f"Column {column!r} holds {split.features[column]} values, not text. Text columns must "
                "be strings: convert it, or pick another column."
            )
        for row in np.flatnonzero(pc.is_null(split.with_format("arrow")[column]).to_numpy(zero_copy_only=False)):
            problems.setdefault(int(row), f"{column!r} is null")
    return problems


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


def load_raw_datasets(data_args, cache_dir: str | None = None, seed: int = 42) -> DatasetDict:
    """Load train and validation splits from the hub, local files or a saved directory (see DataArguments).

    Text is read as written; a record whose text is missing, null or not a string is a DataError naming it.
    """
    if data_args.block_size is not None and data_args.block_size <= 0:
        raise DataError(f"--block_size must be a positive number of tokens, got {data_args.block_size}.")
    if not 0 <= data_args.validation_split_percentage < 100:
        raise DataError(
            f"--validation_split_percentage must be in [0, 100) (0: no held-out split), got "
            f"{data_args.validation_split_percentage}."
        )
    text_columns = text_columns_of(data_args)
    if data_args.load_from_disk:
        raw = load_saved(data_args.dataset_name)
    elif data_args.dataset_name:
        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    elif data_args.train_file:
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        raw, problems = load_files(files, cache_dir, text_columns)
        raise_for_bad_records(problems)
    else:
        raise DataError("No data given: pass --train_file, or --dataset_name (with --load_from_disk for a saved dir).")
    if not isinstance(raw, DatasetDict):
        raw = DatasetDict({"train": raw})
    if "train" not in raw:
        raise DataError(
            f"The dataset has no 'train' split (found: {', '.join(raw) or 'none'}). Rename or pick a split."
        )
    if not data_args.train_file:
        raise_for_bad_records(
            {
                name: {
                    row: (f"{data_args.dataset_name} ({name} split), record {row + 1}", problem)
                    for row, problem in null_text_rows(split, text_columns).items()
                }
                for name, split in raw.items()
            }
        )
    if "validation" not in raw and data_args.validation_split_percentage > 0:
        train, validation = split_off_validation(raw["train"], data_args.validation_split_percentage, seed)
        raw = DatasetDict({**raw, "train": train, "validation": validation})
    raw = DatasetDict({name: raw[name] for name in ("train", "validation") if name in raw})
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for name, limit in limits.items():
        if name in raw and limit is not None:
            raw[name] = raw[name].select(range(min(limit, len(raw[name]))))
    if len(raw["train"]) == 0:
        raise DataError("The train split is empty.")
    return raw


def text_columns_of(data_args) -> tuple[str, ...]:
    """The columns read as text: prompt and response when given, else the text column."""
    if data_args.prompt_column:
        return data_args.prompt_column, data_args.response_column
    return (data_args.text_column,)


def raise_for_bad_records(problems: dict[str, dict[int, tuple[str, str]]], shown: int = 5) -> None:
    """A DataError listing the first records without usable text, when there are any."""
    places = [f"{place}: {problem}" for split in problems.values() for _, (place, problem) in sorted(split.items())]
    if places:
        raise DataError(
            f"{len(places)} record(s) have no usable text: {'; '.join(places[:shown])}. Text must be a "
            "JSON string (quote numbers, remove nulls and records without the column)."
        )


def split_off_validation(train, percentage: float, seed: int):
    """(train, validation): `percentage` percent of `train` held out; a DataError when no record would be left to
    train on (datasets holds out ceil(percentage% of the records), at least one)."""
    if math.ceil(percentage / 100 * len(train)) >= len(train):
        raise DataError(
            f"--validation_split_percentage {percentage:g} of {len(train)} training record(s) leaves none "
            "to train on: lower it, pass --validation_file, or add data."
        )
    split = train.train_test_split(test_size=percentage / 100, seed=seed)
    return split["train"], split["test"]


def require_validation_data(splits, do_eval: bool) -> None:
    """--do_eval needs validation records: an error instead of silently skipping evaluation."""
    if do_eval and splits.get("validation") is None:
        raise DataError(
            "--do_eval needs validation data: pass --validation_file, set "
            "--validation_split_percentage above 0, or drop --do_eval."
        )
    if do_eval and len(splits["validation"]) == 0:
        raise DataError(
            "--do_eval has no validation records to evaluate (--max_eval_samples 0?): raise "
            "--max_eval_samples, or drop --do_eval."
        )


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
