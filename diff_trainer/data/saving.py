"""Write datasets atomically: the directory at `path` is always absent, the old complete one or the new complete one.

The rows go into a hidden staging directory next to `path` (`.NAME.partial-HOST-PID-XXXX`) that is renamed into
place only when `save_to_disk` finished; an existing directory is swapped out in one step (Linux `renameat2`
exchange), so a kill never leaves a mix of old and new splits. Staging left behind by a killed save on this host is
removed by the next save to the same path.
"""

import ctypes
import glob
import json
import logging
import os
import re
import shutil
import socket
import tempfile

from datasets import DatasetDict

from .io import current_umask
from .loading import DataError

logger = logging.getLogger(__name__)

SAVED_MARKER = "saved_by_diff_trainer.json"  # lists the entries a save wrote; only such a directory is replaced
DATASETS_FILE = re.compile(r"dataset_info\.json|state\.json|data-\d+-of-\d+\.arrow")  # a split's own files
_RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths atomically
_AT_FDCWD = -100


def save_final_dataset(
    final: DatasetDict, path: str, *, overwrite: bool = False, num_proc=None, extra_files: dict[str, str] | None = None
) -> str:
    """Save into a staging sibling directory, then move it to `path` in one rename (or one swap with the old one).

    `extra_files` (file name -> text) are written into the directory with the data, e.g. the rows' layout.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise DataError(f"{path} already exists; pass --overwrite_final_dataset or choose another directory.")
    if os.path.exists(path):
        check_replaceable(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_staging(parent, name)
    staging = tempfile.mkdtemp(prefix=f"{staging_prefix(name)}{socket.gethostname()}-{os.getpid()}-", dir=parent)
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the saved data should read like any dir
    try:
        final.save_to_disk(staging, num_proc=num_proc if num_proc and num_proc > 1 else None)
        written = {**(extra_files or {}), SAVED_MARKER: ""}
        written[SAVED_MARKER] = json.dumps(
            {"written_by": "diff_trainer save_final_dataset", "entries": sorted([*os.listdir(staging), *written])},
            indent=1,
        )
        for file_name, text in written.items():
            with open(os.path.join(staging, file_name), "w", encoding="utf-8") as handle:
                handle.write(text)
        if not os.path.exists(path):
            os.rename(staging, path)
        elif exchange(staging, path):
            shutil.rmtree(staging)  # now the old data
        else:  # no atomic swap on this file system: a kill between the two renames leaves no directory, never a mix
            old = staging + ".old"
            os.rename(path, old)
            os.rename(staging, path)
            shutil.rmtree(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved the final dataset (%s) to %s", ", ".join(f"{k}: {len(v)} rows" for k, v in final.items()), path)
    return path


def check_replaceable(path: str) -> None:
    """A DataError unless `path` is a directory this function saved, holding only what it wrote (the entries its
    marker lists, each split directory only datasets' own files): --overwrite_final_dataset deletes nothing else."""
    marker = os.path.join(path, SAVED_MARKER)
    refuse = (
        f"; --overwrite_final_dataset replaces only a directory written by --save_final_dataset. Choose another "
        f"directory, or move {path} away yourself."
    )
    try:
        with open(marker, encoding="utf-8") as handle:
            entries = set(json.load(handle)["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{path} is not a saved final dataset (no readable {SAVED_MARKER}){refuse}") from None
    for entry in sorted(os.listdir(path)):
        inside = os.path.join(path, entry)
        foreign = [entry] if entry not in entries else []
        if not foreign and os.path.isdir(inside):
            foreign = [f"{entry}/{name}" for name in sorted(os.listdir(inside)) if not DATASETS_FILE.fullmatch(name)]
        if foreign:
            raise DataError(f"{path} holds {foreign[0]}, which --save_final_dataset did not write{refuse}")


def optional_directory(value, bare_flag: str):
    """--save_final_dataset from a config file: `true` means the bare flag (directory `bare_flag`), `false` none."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return bare_flag if value.lower() == "true" else None
    return value


def staging_prefix(name: str) -> str:
    return f".{name}.partial-"


def exchange(first: str, second: str) -> bool:
    """Swap two directories in one atomic step (Linux renameat2); False where the system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    return libc.renameat2(_AT_FDCWD, first.encode(), _AT_FDCWD, second.encode(), _RENAME_EXCHANGE) == 0


def remove_stale_staging(parent: str, name: str) -> list[str]:
    """Delete staging directories of `name` left by saves on this host whose process is gone; returns them."""
    host = socket.gethostname()
    removed = []
    for staging in glob.glob(os.path.join(glob.escape(parent), glob.escape(staging_prefix(name)) + "*")):
        owner = os.path.basename(staging)[len(staging_prefix(name)) :].rsplit("-", 2)  # HOST, PID, random part
        owner_host, pid = (owner[0], owner[1]) if len(owner) == 3 else ("", "")
        if owner_host == host and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    if removed:
        logger.warning("Removed %d staging directories left by killed saves: %s", len(removed), ", ".join(removed))
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
