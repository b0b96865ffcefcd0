"""Checkpoint layouts that `save_pretrained` alone cannot read (LLaDA, Dream, the SEDD authors' layout), registered
once and consulted by every reader of checkpoints (`models.loading`) before the plain and adapter-only loaders.

A layout module builds a `CheckpointLoader` and calls `register_loader` when it is imported (`diff_trainer.models`
imports them all). This module imports nothing from the rest of the package but the error type.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..data.loading import DataError


class CheckpointError(DataError):
    """A checkpoint path that cannot be used, with a message naming it and what to do (one line on the command line)."""


@dataclass(frozen=True)
class CheckpointLoader:
    """One checkpoint layout: `matches(path)` says whether `load(path, **options)` can load the directory (or hub
    name).

    `load_tokenizer(path)`: for tokenizer files AutoTokenizer cannot read without the checkpoint's code.
    `tokenizer_for_ids(path, tokenizer_name)`: a tokenizer that training from the checkpoint must keep, because the
    model's ids depend on it (SEDD: MASK at the absorbing id, before any token is added).
    """

    matches: Callable[[str], bool]
    load: Callable[..., Any]
    load_tokenizer: Callable[..., Any] | None = None
    tokenizer_for_ids: Callable[..., Any] | None = None


CHECKPOINT_LOADERS: list[CheckpointLoader] = []


def register_loader(loader: CheckpointLoader) -> CheckpointLoader:
    """Consult `loader` for every checkpoint read from now on (before the plain and adapter-only loaders)."""
    if loader not in CHECKPOINT_LOADERS:
        CHECKPOINT_LOADERS.append(loader)
    return loader


def registered_loader(path) -> CheckpointLoader | None:
    """The registered loader of `path` (a directory, or a hub name for layouts that read the hub), or None."""
    if path is None:
        return None
    return next((loader for loader in CHECKPOINT_LOADERS if loader.matches(path)), None)
