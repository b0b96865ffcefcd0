"""Small file helpers: atomic writes of .txt lines, .jsonl and .jsonl.zst records, and of whole directories.

Every writer goes through `atomic_text_writer`, which fills a hidden temporary file next to the target
and renames it into place only once everything was written, so a failure never leaves partial output;
`staged_directory` does the same for a directory.
"""

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import zstandard
from tqdm import tqdm

JSONL_SUFFIXES = (".jsonl", ".jsonl.zst")
TEXT_SUFFIX = ".txt"

_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}
_ESCAPED_CHAR = re.compile(r"\\([\\nr])")


def escape_line(text: str) -> str:
    """Make `text` fit on one line: backslash -> `\\\\`, newline -> `\\n`, carriage return -> `\\r`."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def unescape_line(line: str) -> str:
    """Invert `escape_line`."""
    return _ESCAPED_CHAR.sub(lambda match: _UNESCAPES[match.group(1)], line)


@contextlib.contextmanager
def atomic_text_writer(path: str | os.PathLike, zstd_level: int = 10) -> Iterator[TextIO]:
    """Yield a UTF-8 text handle whose content lands at `path` only if the block exits cleanly.

    A path ending in `.zst` is zstandard-compressed. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as raw:
            if path.suffix == ".zst":
                compressor = zstandard.ZstdCompressor(level=zstd_level)
                with compressor.stream_writer(raw, closefd=False) as compressed:
                    with io.TextIOWrapper(compressed, encoding="utf-8", newline="\n") as text:
                        yield text
            else:
                with io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as text:
                    yield text
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling directory of `path`; when the block exits cleanly it replaces `path`,
    otherwise it is removed, so an interrupted write leaves nothing that loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the result should read like any directory
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_lines(
    lines: Iterable[str],
    path: str | os.PathLike,
    total: int | None = None,
    description: str | None = None,
    zstd_level: int = 10,
) -> int:
    """Write one string per line (the caller makes sure none contains a newline); return the count."""
    count = 0
    with atomic_text_writer(path, zstd_level) as handle:
        for line in tqdm(lines, total=total, desc=description or f"writing {Path(path).name}", unit=" rec"):
            handle.write(line)
            handle.write("\n")
            count += 1
    return count


def write_jsonl(
    records: Iterable[dict[str, Any]],
    path: str | os.PathLike,
    total: int | None = None,
    description: str | None = None,
    zstd_level: int = 10,
) -> int:
    """Write one JSON object per line to a `.jsonl` or `.jsonl.zst` file; return the count."""
    if not str(path).endswith(JSONL_SUFFIXES):
        raise ValueError(f"expected a path ending in {' or '.join(JSONL_SUFFIXES)}, got {path}")
    lines = (json.dumps(record, ensure_ascii=False, default=str) for record in records)
    return write_lines(lines, path, total=total, description=description, zstd_level=zstd_level)


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield the records of a `.jsonl` or `.jsonl.zst` file."""
    with open(path, "rb") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw) if str(path).endswith(".zst") else raw
        for line in io.TextIOWrapper(stream, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)
