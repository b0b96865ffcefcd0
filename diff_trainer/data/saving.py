"""Write datasets atomically: the directory at `path` is always absent, the old complete one or the new complete one.

The rows go into a hidden staging directory next to `path` (`.NAME.partial-HOST-PID-XXXX`) that is renamed into
place only when `save_to_disk` finished; an existing directory is swapped out in one step (Linux `renameat2`
exchange), so a kill never leaves a mix of old and new splits. Staging left behind by a killed save on this host is
removed by the next save to the same path.
"""

import contextlib
import ctypes
import errno
import glob
import json
import logging
import os
import re
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator

from datasets import DatasetDict

from .io import current_umask
from .loading import DataError, exception_chain

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
    check_writable(path, "--save_final_dataset")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_staging(parent, name)
    staging = tempfile.mkdtemp(prefix=f"{staging_prefix(name)}{socket.gethostname()}-{os.getpid()}-", dir=parent)
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the saved data should read like any dir
    try:
        with reporting_full_disk(staging, f"{path} is left as it was: free space and run again.", shown_as=path):
            write_staged_dataset(final, staging, num_proc, extra_files)
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


def write_staged_dataset(final: DatasetDict, staging: str, num_proc, extra_files: dict[str, str] | None) -> None:
    """The rows, the extra files and the marker listing them, into the staging directory."""
    final.save_to_disk(staging, num_proc=num_proc if num_proc and num_proc > 1 else None)
    written = {**(extra_files or {}), SAVED_MARKER: ""}
    written[SAVED_MARKER] = json.dumps(
        {"written_by": "diff_trainer save_final_dataset", "entries": sorted([*os.listdir(staging), *written])},
        indent=1,
    )
    for file_name, text in written.items():
        with open(os.path.join(staging, file_name), "w", encoding="utf-8") as handle:
            handle.write(text)


class DiskFull(DataError):
    """A save stopped by a full disk, a disk quota or the file-size limit."""


# What each write failure is called; errno names, and the texts of writers that raise without an errno.
FULL_DISK = {
    errno.ENOSPC: ("no space left on {device}", ("No space left on device", "os error 28")),
    errno.EDQUOT: ("disk quota exceeded on {device}", ("Disk quota exceeded", "os error 122")),
    errno.EFBIG: ("the file-size limit ({limit}) was reached", ("File too large", "os error 27")),
}
# torch.save's writer reports a failed write without its cause (`unexpected pos`, `file write failed`)
TORCH_WRITE_FAILURE = re.compile(r"PytorchStreamWriter failed writing|unexpected pos \d+ vs \d+|file write failed")


@contextlib.contextmanager
def reporting_full_disk(directory: str, after: str, shown_as: str | None = None) -> Iterator[None]:
    """Turn a write into `directory` that fails for lack of space (ENOSPC, EDQUOT) or the file-size limit (EFBIG)
    into one DiskFull line naming the device and the file, then `after` (what is kept, what to do); other errors
    pass unchanged. `shown_as` names the directory in the message when the writes go to a staging copy of it."""
    try:
        yield
    except DataError:
        raise
    except Exception as error:
        full = full_disk_error(error, directory, after, shown_as)
        if full is None:
            raise
        raise full from error


def full_disk_error(error: Exception, directory: str, after: str, shown_as: str | None = None) -> DiskFull | None:
    """The DiskFull line for `error` raised while writing into `directory` (see `reporting_full_disk`), or None when
    it is another error."""
    code = write_failure_errno(error, directory)
    if code is None:
        return None
    written = file_being_written(error, directory)
    inside = os.path.relpath(written, directory)
    if shown_as and not inside.startswith(os.pardir):
        written = os.path.normpath(os.path.join(shown_as, inside))
    what = FULL_DISK[code][0].format(device=device_of(directory), limit=file_size_limit())
    return DiskFull(f"{what} while writing {written}; {after}")


def write_failure_errno(error: BaseException, directory: str) -> int | None:
    """ENOSPC, EDQUOT or EFBIG when `error` (or an exception it was raised from) is that write failure, else None."""
    chain = list(exception_chain(error))
    for link in chain:
        if isinstance(link, OSError) and link.errno in FULL_DISK:
            return link.errno
    texts = [str(link) for link in chain]
    for code, (_, markers) in FULL_DISK.items():
        if any(marker in text for marker in markers for text in texts):
            return code
    if any(TORCH_WRITE_FAILURE.search(text) for text in texts):  # no cause given: look at the file system
        usage = os.statvfs(existing_parent(directory))
        if usage.f_bavail * usage.f_frsize < 1 << 20:
            return errno.ENOSPC
        if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
            return errno.EFBIG
    return None


SHARD = re.compile(r"(model|adapter_model)-(\d+)-of-(\d+)\.safetensors")


def file_being_written(error: BaseException, directory: str) -> str:
    """The file whose write failed: the error's own file name; for safetensors, which names no file and removes
    what it wrote, the weights file that is missing; else the newest file under `directory`."""
    chain = list(exception_chain(error))
    for link in chain:
        if isinstance(link, OSError) and link.filename:
            return os.path.abspath(link.filename)
    if any("Error while serializing" in str(link) for link in chain):  # safetensors' message
        return os.path.join(directory, missing_safetensors_file(directory))
    newest, newest_time = directory, -1.0
    for root, _, names in os.walk(directory):
        for name in names:
            with contextlib.suppress(OSError):
                if (modified := os.stat(os.path.join(root, name)).st_mtime_ns) >= newest_time:
                    newest, newest_time = os.path.join(root, name), modified
    return newest


def missing_safetensors_file(directory: str) -> str:
    """The weights file a failed safetensors save did not leave: the shard after the last one written, or the one
    file of an unsharded model (an adapter's, beside an adapter_config.json)."""
    shards = [shard for shard in map(SHARD.fullmatch, os.listdir(directory)) if shard]
    if shards:
        last = max(shards, key=lambda shard: int(shard.group(2)))
        width = len(last.group(2))
        return f"{last.group(1)}-{int(last.group(2)) + 1:0{width}d}-of-{last.group(3)}.safetensors"
    adapter = os.path.isfile(os.path.join(directory, "adapter_config.json"))
    return "adapter_model.safetensors" if adapter else "model.safetensors"


def check_writable(directory: str, flag: str) -> None:
    """A DataError naming `directory` when no file can be created in it, or in its nearest existing parent when it
    does not exist yet (a read-only file system, no permission, a file in the way); probed by creating and removing
    a file, which also catches what permission bits do not show (read-only mounts, root on sysfs)."""
    existing = existing_parent(directory)
    probe = os.path.join(existing, f".diff_trainer-probe-{socket.gethostname()}-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as error:
        where = "" if existing == os.path.abspath(directory) else f" (it would be made in {existing})"
        raise DataError(
            f"{flag} {directory}: cannot write there{where}: {error.strerror}. Choose a writable directory."
        ) from None


def existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def device_of(path: str) -> str:
    """The device holding `path` and where it is mounted, as /proc/self/mounts lists it (the mount point alone
    where that file cannot be read)."""
    mount = existing_parent(path)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    with contextlib.suppress(OSError):
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            devices = {fields[1]: fields[0] for fields in (line.split() for line in mounts) if len(fields) > 1}
        if mount in devices:
            return f"{devices[mount]} (mounted at {mount})"
    return mount


def file_size_limit() -> str:
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else f"ulimit -f: {soft} bytes"


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
