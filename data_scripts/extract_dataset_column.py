"""Write one column of a dataset split to a plain file, for tokenizer training, inspection or a quick corpus.

The dataset can be a hub name, a local data file (.json/.jsonl/.csv/.tsv/.parquet/.txt/.arrow, optionally
compressed as .zst/.gz/.bz2/.xz) or a directory written by `Dataset.save_to_disk`. A saved single `Dataset`
counts as one split named `train`, like a local data file.

Output formats, chosen by the suffix of --output:
  .txt                one record per line; backslash, newline and carriage return inside a record are written
                      as the two-character escapes \\\\, \\n and \\r (undo with diff_trainer.data.io.unescape_line);
                      values that are not strings are written as JSON
  .jsonl, .jsonl.zst  one {"<column>": value} object per line (.zst is zstandard-compressed)

The file is written under a temporary name and renamed at the end, so a failed run leaves no partial output.

    python data_scripts/extract_dataset_column.py --dataset data/stdlib_docstrings/train.jsonl.zst \\
        --column text --output /tmp/stdlib.txt
"""

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

try:
    from diff_trainer.data.io import JSONL_SUFFIXES, TEXT_SUFFIX, escape_line, write_jsonl, write_lines
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.io import JSONL_SUFFIXES, TEXT_SUFFIX, escape_line, write_jsonl, write_lines

BUILDER_BY_SUFFIX = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}
COMPRESSION_SUFFIXES = (".zst", ".gz", ".bz2", ".xz")
READ_BATCH_SIZE = 1000


def check_output_path(output: str) -> None:
    """Reject an output suffix this script cannot write, before any loading work."""
    if not output.endswith((TEXT_SUFFIX, *JSONL_SUFFIXES)):
        raise ValueError(f"--output must end in {TEXT_SUFFIX}, {' or '.join(JSONL_SUFFIXES)}: got {output}")


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _builder_for_file(path: Path) -> tuple[str, dict[str, Any]]:
    """The `datasets` builder and its options for a local data file, judged by its (uncompressed) suffix."""
    suffix = path.with_suffix("").suffix if path.suffix in COMPRESSION_SUFFIXES else path.suffix
    if suffix not in BUILDER_BY_SUFFIX:
        raise ValueError(f"cannot tell the format of {path}: expected one of {', '.join(BUILDER_BY_SUFFIX)}")
    return BUILDER_BY_SUFFIX[suffix], {"sep": "\t"} if suffix == ".tsv" else {}


def load_splits(dataset: str) -> datasets.DatasetDict:
    """Every split of a saved dataset directory, a local data file (one split, `train`) or a hub dataset."""
    path = Path(dataset)
    if path.is_dir() and _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
    if path.is_file():
        builder, options = _builder_for_file(path)
        return datasets.load_dataset(builder, data_files={"train": str(path)}, **options)
    return datasets.load_dataset(dataset)


def select_split(splits: datasets.DatasetDict, split: str) -> datasets.Dataset:
    if split not in splits:
        raise ValueError(f"split {split!r} not found; available splits: {', '.join(splits)}")
    return splits[split]


def check_column(dataset: datasets.Dataset, column: str) -> None:
    if column not in dataset.column_names:
        raise ValueError(f"column {column!r} not found; available columns: {', '.join(dataset.column_names)}")


def column_values(dataset: datasets.Dataset, column: str) -> Iterator[Any]:
    """The values of one column, read in batches so large datasets are not loaded whole."""
    for batch in dataset.select_columns([column]).iter(batch_size=READ_BATCH_SIZE):
        yield from batch[column]


def text_line(value: Any) -> str:
    """One `.txt` line: strings as they are, other values as JSON, then escaped onto a single line."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return escape_line(text)


def extract_column(dataset: str, column: str, output: str, split: str = "train", max_samples: int | None = None) -> int:
    """Write `column` of `split` (its first `max_samples` rows if given) to `output`; return the rows written."""
    check_output_path(output)
    data = select_split(load_splits(dataset), split)
    check_column(data, column)
    if max_samples is not None:
        data = data.select(range(min(max_samples, len(data))))
    values = column_values(data, column)
    description = f"writing {column} to {Path(output).name}"
    if output.endswith(TEXT_SUFFIX):
        return write_lines((text_line(value) for value in values), output, total=len(data), description=description)
    return write_jsonl(({column: value} for value in values), output, total=len(data), description=description)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset", required=True, help="hub dataset name, local data file, or a directory saved with save_to_disk"
    )
    parser.add_argument("--column", required=True, help="column to extract")
    parser.add_argument("--split", default="train", help="split to read (default: %(default)s)")
    parser.add_argument("--output", required=True, help="output file ending in .txt, .jsonl or .jsonl.zst")
    parser.add_argument("--max_samples", type=int, default=None, help="keep only the first N rows of the split")
    args = parser.parse_args(argv)
    if args.max_samples is not None and args.max_samples < 0:
        parser.error("--max_samples must be >= 0")
    try:
        count = extract_column(args.dataset, args.column, args.output, args.split, args.max_samples)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {count} records to {args.output}")


if __name__ == "__main__":
    main()
