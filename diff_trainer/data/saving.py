"""Write the final rows once, atomically, for reuse with --load_from_disk --skip_concat."""

import logging
import os
import shutil
import tempfile
from typing import Optional

from datasets import DatasetDict

from .loading import DataError

logger = logging.getLogger(__name__)


def save_final_dataset(final: DatasetDict, path: str, *, overwrite: bool = False, num_proc=None,
                       extra_files: Optional[dict[str, str]] = None) -> str:
    """Save into a temporary sibling directory, then rename it to `path` (never a half-written `path`).

    `extra_files` (file name -> text) are written into the directory with the data, e.g. the rows' layout.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise DataError(f"{path} already exists; pass --overwrite_final_dataset or choose another directory.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    try:
        final.save_to_disk(staging, num_proc=num_proc if num_proc and num_proc > 1 else None)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(staging, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Saved the final dataset (%s) to %s", ", ".join(f"{k}: {len(v)} rows" for k, v in final.items()), path)
    return path
