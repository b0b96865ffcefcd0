"""diff-train-cascade: stages trained in order, each from the previous one; finished stages skipped; interrupted
ones continued exactly; bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cli.cascade_fixtures import ROOT, run_in_process, write_cascade
from diff_trainer.cli import train_cascade, training_runs


def run_config(outputs: Path, name: str) -> dict:
    return yaml.safe_load((outputs / name / "run_config.yaml").read_text())


def test_stages_train_in_order_each_from_the_previous_stage(trained_cascade):
    outputs = trained_cascade["outputs"]
    names = [f"toy-tiny-stage{stage}" for stage in (1, 2, 3)]
    assert sorted(path.name for path in outputs.iterdir()) == names
    first, second, third = (run_config(outputs, name) for name in names)
    assert first["model_type"] == "llama" and "model_name_or_path" not in first  # stage 1 from scratch
    assert second["model_name_or_path"] == str(outputs / names[0]) and "model_type" not in second
    assert third["model_name_or_path"] == str(outputs / names[1]) and "tokenizer_name" not in third
    assert (first.get("prefix_shuffle"), second["prefix_shuffle"], third["block_size"]) == (None, "segments", 96)
    for name in names:
        assert json.loads((outputs / name / "trainer_state.json").read_text())["global_step"] == 2
    printed = trained_cascade["printed"]
    assert (
        printed.index("== toy-tiny-stage1: from scratch [new]")
        < printed.index(f"== toy-tiny-stage2: from {outputs / names[0]} [new]")
        < printed.index("== toy-tiny-stage3")
    )


def test_finished_stages_are_skipped(trained_cascade, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(training_runs.subprocess, "run", lambda *a, **k: pytest.fail("a finished stage was trained"))
    train_cascade.main([str(trained_cascade["config_dir"]), "--stages", "2", "3"])
    assert capsys.readouterr().out.count("[finished]") == 2


def test_run_names_and_starting_points(trained_cascade, tmp_path):
    config_dir, outputs = trained_cascade["config_dir"], trained_cascade["outputs"]
    checkpoint = str(tmp_path / "pretrained-small")
    runs = train_cascade.stage_runs(config_dir, [1, 2], checkpoint, each_from_start=False)
    assert list(runs) == ["toy-pretrained-small-stage1-finetuning", "toy-pretrained-small-stage2-finetuning"]
    assert runs["toy-pretrained-small-stage1-finetuning"]["model_name_or_path"] == checkpoint
    assert "model_type" not in runs["toy-pretrained-small-stage1-finetuning"]
    assert runs["toy-pretrained-small-stage2-finetuning"]["model_name_or_path"] == str(
        outputs / "toy-pretrained-small-stage1-finetuning"
    )
    each = train_cascade.stage_runs(config_dir, [2, 3], checkpoint, each_from_start=True)
    assert {flags["model_name_or_path"] for flags in each.values()} == {checkpoint}
    scratch = train_cascade.stage_runs(config_dir, [3], None, each_from_start=True)["toy-tiny-stage3"]
    assert "model_name_or_path" not in scratch and scratch["model_type"] == "llama"


def test_bad_cascades(cascade_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(training_runs.subprocess, "run", run_in_process)
    outputs = tmp_path / "outputs"

    def error(stage_files, *flags):
        config_dir = write_cascade(tmp_path / "config", stage_files, outputs)
        with pytest.raises(SystemExit):
            train_cascade.main([str(config_dir), *flags])
        return capsys.readouterr().err

    swapped = error({1: (cascade_data[2], 64)}, "--stages", "1")
    assert "stage1.yaml says `prefix: none` but" in swapped and "record 1 has the prefix 'red <SEP> owl'" in swapped
    assert "record 1 has nothing before <DFF>" in error({2: (cascade_data[1], 64)}, "--stages", "2")
    (tmp_path / "config" / "stage2.yaml").write_text(
        yaml.safe_dump({"prefix": "keywords", "train_file": str(cascade_data[2]), "prefix_separator": " | "})
    )
    assert "holds the separator ' | '" in error({}, "--stages", "2")
    assert "stage4.yaml does not exist" in error({}, "--stages", "4")
    assert "toy-tiny-stage2, which does not exist: train that stage first (add it to --stages 3)" in error(
        {3: (cascade_data[3], 96)}, "--stages", "3"
    )
    assert "must be increasing" in error({}, "--stages", "2", "1")
    (outputs / "toy-tiny-stage1" / "checkpoint-1").mkdir(parents=True)
    assert "pass --resume to continue" in error({1: (cascade_data[1], 32)}, "--stages", "1")


def test_an_interrupted_stage_is_continued_to_the_weights_of_an_uninterrupted_run(
    cascade_data, tmp_path, monkeypatch, capsys
):
    """Stage 1 trained 2 steps, then rolled back to its step-1 checkpoint (as after a kill) and continued with
    --resume: it ends with exactly the uninterrupted run's weights."""
    from safetensors.torch import load_file

    monkeypatch.chdir(ROOT)
    commands = []
    monkeypatch.setattr(
        training_runs.subprocess,
        "run",
        lambda command, check: commands.append(command) or run_in_process(command, check),
    )
    outputs = tmp_path / "outputs"
    config_dir = write_cascade(tmp_path / "config", {1: (cascade_data[1], 32)}, outputs)
    cascade = yaml.safe_load((config_dir / "cascade.yaml").read_text())
    cascade["train"].update(save_strategy="steps", save_steps=1)
    (config_dir / "cascade.yaml").write_text(yaml.safe_dump(cascade))
    train_cascade.main([str(config_dir), "--stages", "1"])
    stage = outputs / "toy-tiny-stage1"
    uninterrupted = load_file(stage / "model.safetensors")
    for leftover in ("checkpoint-2", "model.safetensors", "train_results.json", "all_results.json"):
        path = stage / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    capsys.readouterr()
    train_cascade.main([str(config_dir), "--stages", "1", "--resume"])
    assert "== toy-tiny-stage1: from scratch [interrupted]" in capsys.readouterr().out
    assert commands[-1][-2:] == ["--resume", "true"] and commands[0][-1].endswith("run_config.yaml")
    continued = load_file(stage / "model.safetensors")
    assert continued.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(continued[name], tensor), name


@pytest.mark.parametrize("key, value", [("dataset", "../../x"), ("model", "/abs/model"), ("dataset", "..")])
def test_run_names_are_names_not_paths(tmp_path, key, value):
    (tmp_path / "cascade.yaml").write_text(yaml.safe_dump({"dataset": "toy", "model": "tiny", key: value}))
    with pytest.raises(train_cascade.CascadeError, match=f"`{key}` {value!r} .* is not a plain name"):
        train_cascade.load_cascade(tmp_path)
