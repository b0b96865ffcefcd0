"""save_final_dataset: atomic save, and a save -> load_from_disk --skip_concat round trip gives the same rows."""

import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from conftest import make_byte_tokenizer
from diff_trainer.data.loading import DataError, load_raw_datasets
from diff_trainer.data.pipeline import Preprocessor
from diff_trainer.data.saving import save_final_dataset
from diff_trainer.training.args.data import DataArguments

BLOCK = 16
REPO = Path(__file__).resolve().parents[2]


def final_rows(tokenizer, raw, **data_kwargs):
    args = DataArguments(block_size=BLOCK, **data_kwargs)
    return Preprocessor(tokenizer, args).run(raw)[0]


@pytest.fixture
def final():
    texts = [f"old {i}<DFF>new {i * 7}" for i in range(12)]
    raw = DatasetDict(
        {"train": Dataset.from_dict({"text": texts[:9]}), "validation": Dataset.from_dict({"text": texts[9:]})}
    )
    return final_rows(make_byte_tokenizer(), raw)


def test_save_then_reload_with_skip_concat_gives_identical_rows(tmp_path, final):
    target = tmp_path / "final"
    assert save_final_dataset(final, str(target)) == str(target)
    args = DataArguments(dataset_name=str(target), load_from_disk=True, skip_concat=True, block_size=BLOCK)
    raw = load_raw_datasets(args, cache_dir=str(tmp_path / "cache"))
    reloaded, _ = Preprocessor(make_byte_tokenizer(), args).run(raw)
    assert list(reloaded) == ["train", "validation"]
    for name in final:
        assert reloaded[name].to_list() == final[name].to_list()
    # only the final directory is left next to it: no staging directory
    assert [name for name in os.listdir(tmp_path) if name.startswith(".final")] == []


def test_existing_directory_is_refused_without_overwrite(tmp_path, final):
    target = tmp_path / "final"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists; pass --overwrite_final_dataset"):
        save_final_dataset(final, str(target))
    assert (target / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_a_previous_save(tmp_path, final):
    target = tmp_path / "final"
    save_final_dataset(
        DatasetDict({"train": final["train"].select([0])}), str(target), num_proc=2, extra_files={"notes.json": "{}"}
    )
    save_final_dataset(final, str(target), overwrite=True)
    assert load_from_disk(str(target))["validation"].to_list() == final["validation"].to_list()
    assert not (target / "notes.json").exists()


@pytest.mark.parametrize("plant", ["source tree", "model", "file added to a save", "file added to a split"])
def test_overwrite_refuses_what_a_save_did_not_write(tmp_path, final, plant):
    """--overwrite_final_dataset must not delete a source tree, a trained model, or files added to a saved dataset."""
    target = tmp_path / "target"
    foreign = {
        "source tree": "setup.py",
        "model": "model.safetensors",
        "file added to a save": "README.md",
        "file added to a split": "train/notes.txt",
    }[plant]
    if plant.startswith("file added"):
        save_final_dataset(final, str(target))
    (target / foreign).parent.mkdir(parents=True, exist_ok=True)
    (target / foreign).write_text("mine")
    expected = "is not a saved final dataset" if not plant.startswith("file added") else f"holds {foreign}, which"
    with pytest.raises(DataError, match=f"{target} {expected}.*move {target} away yourself"):
        save_final_dataset(final, str(target), overwrite=True)
    assert (target / foreign).read_text() == "mine"


def test_failure_mid_save_leaves_no_directory(tmp_path, final, monkeypatch):
    def half_save(self, path, **kwargs):
        with open(os.path.join(path, "partial.arrow"), "w") as handle:
            handle.write("half")
        raise OSError("disk full")

    monkeypatch.setattr(DatasetDict, "save_to_disk", half_save)
    with pytest.raises(OSError, match="disk full"):
        save_final_dataset(final, str(tmp_path / "final"))
    assert os.listdir(tmp_path) == []


KILLED_SAVE = """
import os, signal, sys
from datasets import Dataset, DatasetDict
from diff_trainer.data.saving import save_final_dataset

def save_train_then_die(self, path, **kwargs):
    self["train"].save_to_disk(os.path.join(path, "train"))  # the new train split is written, then SIGKILL
    os.kill(os.getpid(), signal.SIGKILL)

DatasetDict.save_to_disk = save_train_then_die
new = DatasetDict({"train": Dataset.from_dict({"x": [9]}), "validation": Dataset.from_dict({"x": [9]})})
save_final_dataset(new, sys.argv[1], overwrite=True)
"""


def test_a_killed_overwrite_keeps_the_old_complete_dataset_and_its_staging_is_cleaned_up(tmp_path):
    target = tmp_path / "pairs"
    old = DatasetDict({"train": Dataset.from_dict({"x": [1, 2]}), "validation": Dataset.from_dict({"x": [3]})})
    save_final_dataset(old, str(target))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(target)], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    reloaded = load_from_disk(str(target))
    assert reloaded["train"]["x"] == [1, 2] and reloaded["validation"]["x"] == [3]  # old, not new train + old valid
    (stale,) = tmp_path.glob(".pairs.partial-*")
    save_final_dataset(old, str(target), overwrite=True)
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pairs"]


def test_staging_of_a_live_save_is_kept_and_saved_data_is_group_readable(tmp_path, final):
    live = tmp_path / f".final.partial-{socket.gethostname()}-{os.getpid()}-abcd1234"
    live.mkdir()
    previous = os.umask(0o022)
    try:
        save_final_dataset(final, str(tmp_path / "final"))
    finally:
        os.umask(previous)
    assert live.exists()
    assert stat.S_IMODE((tmp_path / "final").stat().st_mode) == 0o755


@pytest.mark.parametrize("overwrite", [False, True], ids=["new directory", "overwrite"])
def test_a_full_disk_during_a_save_is_one_line_naming_the_device_and_file(tmp_path, final, monkeypatch, overwrite):
    import errno

    target = tmp_path / "final"
    if overwrite:
        save_final_dataset(DatasetDict({"train": final["train"].select([0])}), str(target))

    def full_disk(self, path, **kwargs):
        os.makedirs(os.path.join(path, "train"))
        arrow = os.path.join(path, "train", "data-00000-of-00001.arrow")
        with open(arrow, "w") as handle:
            handle.write("half")
        raise OSError(errno.ENOSPC, "No space left on device", arrow)

    monkeypatch.setattr(DatasetDict, "save_to_disk", full_disk)
    with pytest.raises(DataError) as raised:
        save_final_dataset(final, str(target), overwrite=overwrite)
    assert re.fullmatch(
        rf"no space left on \S+ \(mounted at /\S*\) while writing {target}/train/data-00000-of-00001\.arrow; "
        rf"{target} is left as it was: free space and run again\.",
        str(raised.value),
    ), raised.value
    assert [name for name in os.listdir(tmp_path) if name.startswith(".final")] == []  # no staging left
    assert len(load_from_disk(str(target))["train"]) == 1 if overwrite else not target.exists()


def test_a_writer_that_names_no_errno_is_recognised_by_its_message(tmp_path, final, monkeypatch):
    """Writers in Rust or C++ report EFBIG/ENOSPC as text; an error of another kind passes through unchanged."""

    def too_large(self, path, **kwargs):
        with open(os.path.join(path, "dataset_dict.json"), "w") as handle:
            handle.write("{")
        raise RuntimeError("I/O error: File too large (os error 27)")

    monkeypatch.setattr(DatasetDict, "save_to_disk", too_large)
    with pytest.raises(DataError, match=r"^the file-size limit \(.*\) was reached while writing \S*final/dataset_dict"):
        save_final_dataset(final, str(tmp_path / "final"))
    monkeypatch.setattr(DatasetDict, "save_to_disk", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_final_dataset(final, str(tmp_path / "final"))
