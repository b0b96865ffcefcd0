"""Resuming only from complete checkpoints: the marker, the fallback checks, and a resume past a broken checkpoint."""

import json
import logging
from pathlib import Path

import pytest

import run_clm_diff  # the repository root is on pytest's pythonpath (setup.cfg)
from diff_trainer.data.loading import DataError
from diff_trainer.training.checkpoints import (
    COMPLETE_MARKER,
    check_resumable,
    incomplete_reason,
    newest_complete_checkpoint,
)

TINY_LLAMA = (
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,"
    "num_key_value_heads=4,max_position_embeddings=64"
)


def make_checkpoint(output_dir: Path, step: int, *, marker=False, state_step=None, weights=True, state=True):
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / "model.safetensors").write_bytes(b"weights")
    if state:
        saved_step = step if state_step is None else state_step
        (path / "trainer_state.json").write_text(json.dumps({"global_step": saved_step}))
    if marker:
        (path / COMPLETE_MARKER).write_text("{}")
    return path


@pytest.mark.parametrize(
    "damage, reason",
    [
        (dict(state=False), "no trainer_state.json"),
        (dict(state_step=4), "trainer_state.json says step 4, not 6"),
        (dict(weights=False), "no weights file"),
    ],
)
def test_newest_incomplete_checkpoint_is_skipped_with_its_reason(tmp_path, caplog, damage, reason):
    make_checkpoint(tmp_path, 2, marker=True)
    make_checkpoint(tmp_path, 4)  # no marker, but its state and weights are there (an older writer)
    make_checkpoint(tmp_path, 6, **damage)
    make_checkpoint(tmp_path, 10, marker=True).rename(tmp_path / "checkpoint-10-not-ours")
    with caplog.at_level(logging.WARNING, logger="diff_trainer"):
        assert newest_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert (
        f"Skipping incomplete checkpoint {tmp_path / 'checkpoint-6'}: no {COMPLETE_MARKER} marker and {reason}"
        in caplog.text
    )


def test_the_marker_wins_and_a_truncated_state_file_is_incomplete(tmp_path):
    marked = make_checkpoint(tmp_path, 3, marker=True, state=False, weights=False)
    assert incomplete_reason(str(marked)) is None
    truncated = make_checkpoint(tmp_path, 5)
    (truncated / "trainer_state.json").write_text('{"global_st')
    assert "unreadable trainer_state.json" in incomplete_reason(str(truncated))
    assert newest_complete_checkpoint(str(tmp_path)) == str(marked)
    assert newest_complete_checkpoint(str(tmp_path / "missing")) is None


def test_an_explicit_incomplete_checkpoint_is_refused(tmp_path):
    broken = make_checkpoint(tmp_path, 7, state=False)
    with pytest.raises(DataError, match=r"checkpoint-7 is incomplete: no COMPLETE marker .* --resume"):
        check_resumable(str(broken))
    with pytest.raises(DataError, match="no such directory"):
        check_resumable(str(tmp_path / "checkpoint-8"))
    assert check_resumable(str(make_checkpoint(tmp_path, 9, marker=True))) == str(tmp_path / "checkpoint-9")


def test_training_marks_checkpoints_and_resume_passes_over_a_half_written_one(tmp_path, caplog):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i}+{i}=<DFF>{2 * i}"}) + "\n" for i in range(24)))
    out = tmp_path / "out"
    flags = [
        "--model_type",
        "llama",
        "--config_overrides",
        TINY_LLAMA,
        "--tokenizer_name",
        "byte",
        "--block_size",
        "16",
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "4",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--train_file",
        str(data),
        "--validation_split_percentage",
        "0",
        "--do_train",
        "--save_steps",
        "2",
        "--train_diff_model",
    ]
    run_clm_diff.main(flags + ["--max_steps", "4"])
    for step in (2, 4):
        assert json.loads((out / f"checkpoint-{step}" / COMPLETE_MARKER).read_text()) == {"global_step": step}
    # a kill while checkpoint-6 was being written: weights half there, no trainer state, no marker
    (out / "checkpoint-6").mkdir()
    (out / "checkpoint-6" / "model.safetensors").write_bytes(b"\0" * 10)
    with caplog.at_level(logging.INFO, logger="diff_trainer"):
        run_clm_diff.main(flags + ["--max_steps", "6", "--resume", "--log_level", "info"])
    assert f"Skipping incomplete checkpoint {out / 'checkpoint-6'}: no {COMPLETE_MARKER} marker" in caplog.text
    assert f"Resuming from {out / 'checkpoint-4'}" in caplog.text
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert (out / "checkpoint-6" / COMPLETE_MARKER).is_file()
    # the rows' layout travels with the checkpoint (DPO's default --response_padding reads it)
    assert json.loads((out / "config.json").read_text())["diffusion_config"]["row_packing"] == "left"
