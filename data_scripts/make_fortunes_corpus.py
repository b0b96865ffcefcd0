"""Build the `fortunes` corpus: quotations, literary jokes and riddles from BSD fortune's data files.

A second small plain-text corpus whose style (short quotations with `-- Author` lines) differs clearly from the
docstring corpus, so one model per corpus shows two "linguistic fingerprints". The source is Debian's
`fortunes-min` package (BSD licence, see LICENSE.txt); install it first:

    apt-get install -y fortunes-min
    python data_scripts/make_fortunes_corpus.py --output_dir data/fortunes

Each entry between `%` lines is one record `{"text": ...}` (trailing spaces stripped, tabs kept). Entries go to
validation when the sha256 of their text falls in the first `--validation_fraction` of the hash range.
"""

import argparse
import hashlib
import shlex
import shutil
import sys
from pathlib import Path

try:
    from diff_trainer.data.io import write_jsonl
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.io import write_jsonl

DEFAULT_SOURCE = "/usr/share/games/fortunes"
DEFAULT_FILES = ("fortunes", "literature", "riddles")
LICENCE_SOURCE = "/usr/share/doc/fortunes-min/copyright"


def read_fortunes(path: Path) -> list[str]:
    """The entries of one fortune data file (separated by lines holding only `%`), empty ones dropped."""
    entries, current = [], []
    for line in path.read_text(encoding="utf-8", errors="strict").splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current).strip("\n"))
            current = []
        else:
            current.append(line.rstrip())
    entries.append("\n".join(current).strip("\n"))
    return [entry for entry in entries if entry.strip()]


def in_validation(text: str, fraction: float) -> bool:
    """A stable split: the first `fraction` of the sha256 range goes to validation."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) < fraction * 2**32


def write_corpus(source: str, files, output_dir: str, fraction: float, command: str) -> dict:
    """Write train/validation .jsonl.zst, LICENSE.txt and README.md; return the record counts."""
    texts, seen = [], set()
    for name in files:
        path = Path(source) / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: install Debian's fortunes-min (apt-get install -y "
                "fortunes-min) or pass --source_dir."
            )
        for text in read_fortunes(path):
            if text not in seen:
                seen.add(text)
                texts.append(text)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": [t for t in texts if not in_validation(t, fraction)],
        "validation": [t for t in texts if in_validation(t, fraction)],
    }
    for split, rows in splits.items():
        write_jsonl(({"text": text} for text in rows), out / f"{split}.jsonl.zst")
    if Path(LICENCE_SOURCE).is_file():
        shutil.copyfile(LICENCE_SOURCE, out / "LICENSE.txt")
    counts = {split: len(rows) for split, rows in splits.items()}
    (out / "README.md").write_text(readme(counts, files, command, sum(map(len, texts))), encoding="utf-8")
    return counts


def readme(counts: dict, files, command: str, characters: int) -> str:
    return f"""# fortunes: quotations, literary jokes and riddles (plain text)

A small plain-text corpus in a style far from the docstring corpus: short quotations, most of them
followed by an attribution line (`\\t\\t-- Mark Twain`). One record per fortune, field `"text"`, no `<DFF>`
(every character is trained). {characters} characters in all.

| file | records |
|---|---|
| `train.jsonl.zst` | {counts["train"]} |
| `validation.jsonl.zst` | {counts["validation"]} |

## Provenance

The data files {", ".join(files)} of Debian's `fortunes-min` package (BSD fortune, fortune-mod 1.99.1), made by

    apt-get install -y fortunes-min
    {command}

A record goes to validation when the sha256 of its text falls in the first part of the hash range, so the
split is stable. Repeated entries are kept once.

## Licence

BSD licence of the University of California (the advertising clause deleted), as recorded in the package's
copyright file, copied here as `LICENSE.txt`.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="directory for the .jsonl.zst files and README.md")
    parser.add_argument("--source_dir", default=DEFAULT_SOURCE, help="where the fortune data files are")
    parser.add_argument("--files", nargs="+", default=list(DEFAULT_FILES), help="fortune data files to read")
    parser.add_argument("--validation_fraction", type=float, default=0.05, help="share hashed into validation")
    args = parser.parse_args(argv)
    if not 0.0 <= args.validation_fraction <= 1.0:
        parser.error("--validation_fraction must be between 0 and 1")
    command = shlex.join(["python", "data_scripts/make_fortunes_corpus.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        counts = write_corpus(args.source_dir, args.files, args.output_dir, args.validation_fraction, command)
    except FileNotFoundError as error:
        parser.error(str(error))
    print(f"wrote {counts['train']} train and {counts['validation']} validation records to {args.output_dir}")


if __name__ == "__main__":
    main()
