"""A tiny three-stage cascade (hand-written stage files, 1-layer byte-level Llamas), trained once per session;
shared by the cascade CLI tests (registered in conftest.py)."""

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["red", "blue", "green", "cat", "dog", "owl", "sun", "moon", "tree", "rock", "river", "hill"]
TINY_TRAIN = {
    "tokenizer_name": "byte",
    "model_type": "llama",
    "train_diff_model": True,
    "config_overrides": "hidden_size=32,intermediate_size=64,num_hidden_layers=1,num_attention_heads=2,"
    "num_key_value_heads=2,max_position_embeddings=160",
    "concatenate_texts": False,
    "padding_side": "right",
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "learning_rate": 0.01,
    "eval_strategy": "no",
    "save_strategy": "no",
    "use_cpu": True,
    "report_to": "none",
    "disable_tqdm": True,
    "seed": 0,
}


def stage_records(count: int = 12) -> list[list[str]]:
    """Per document its stage-1, -2 and -3 records, as make_cascade_data.py writes them."""
    documents = []
    for index in range(count):
        words = [WORDS[(index + step * 5) % len(WORDS)] for step in range(3)]
        k1, k2 = " <SEP> ".join(words[:2]), " <SEP> ".join(words)
        documents.append([f"<DFF> {k1}", f"{k1} <DFF> {k2}", f"{k2} <DFF> the {words[0]} {words[1]} and {words[2]}."])
    return documents


def write_cascade(directory: Path, stage_files: dict, output_root: Path) -> Path:
    """A cascade config directory whose stage N trains on stage_files[N]."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cascade.yaml").write_text(
        yaml.safe_dump({"dataset": "toy", "model": "tiny", "output_root": str(output_root), "train": TINY_TRAIN})
    )
    for stage, (path, block_size) in stage_files.items():
        flags = {"prefix": "none" if stage == 1 else "keywords", "train_file": str(path), "block_size": block_size}
        if stage > 1:
            flags["prefix_shuffle"] = "segments"
        (directory / f"stage{stage}.yaml").write_text(yaml.safe_dump(flags))
    return directory


@pytest.fixture(scope="session")
def cascade_data(tmp_path_factory) -> dict:
    """{stage: path of its records}."""
    directory = tmp_path_factory.mktemp("cascade_data")
    documents = stage_records()
    files = {}
    for stage in (1, 2, 3):
        files[stage] = directory / f"stage{stage}.jsonl"
        files[stage].write_text(
            "".join(json.dumps({"text": doc[stage - 1], "doc_index": i}) + "\n" for i, doc in enumerate(documents))
        )
    return files


def run_in_process(command, check):
    """subprocess.run stand-in for `python -m diff_trainer.cli.train CONFIG [--resume true]`: the same main(), no
    new interpreter (saves the import time of each stage)."""
    from diff_trainer.cli import train

    assert command[1:3] == ["-m", "diff_trainer.cli.train"] and check
    train.main(command[3:])
    return subprocess.CompletedProcess(command, 0)


@pytest.fixture(scope="session")
def trained_cascade(tmp_path_factory, cascade_data) -> dict:
    """Runs diff-train-cascade on the toy cascade; returns its config dir, output root and printed output."""
    from diff_trainer.cli import train_cascade, training_runs

    root = tmp_path_factory.mktemp("cascade_runs")
    config_dir = write_cascade(
        root / "config",
        {1: (cascade_data[1], 32), 2: (cascade_data[2], 64), 3: (cascade_data[3], 96)},
        root / "outputs",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        patch.setattr(training_runs.subprocess, "run", run_in_process)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            train_cascade.main([str(config_dir), "--stages", "1", "2", "3"])
    return {"config_dir": config_dir, "outputs": root / "outputs", "printed": printed.getvalue()}
