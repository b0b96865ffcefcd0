"""diff-train-corpora: two tiny corpora trained into their own directories, skipped when finished, bad files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diff_trainer.cli import train_corpora

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "tokenizer_name": "char",
    "model_type": "ddit",
    "train_diff_model": True,
    "config_overrides": "hidden_size=32,cond_dim=16,num_hidden_layers=1,num_attention_heads=4,"
    "max_position_embeddings=64",
    "diffusion_objective": "sedd_uniform",
    "sedd_noise": "geometric",
    "dff_labels": "off",
    "block_size": 32,
    "concatenate_texts": True,
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "eval_mc_samples": 1,
    "eval_strategy": "no",
    "save_strategy": "no",
    "use_cpu": True,
    "report_to": "none",
    "disable_tqdm": True,
}


def write_corpora(tmp_path, datasets) -> Path:
    config = tmp_path / "corpora.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output_root": str(tmp_path / "outputs"),
                "datasets": datasets,
                "train": TINY,
                "samples": {"samples": 2, "gen_length": 16, "steps": 4, "seed": 0},
            },
            sort_keys=False,
        )
    )
    return config


@pytest.fixture
def corpora(tmp_path):
    poems = tmp_path / "poems"
    poems.mkdir()
    lines = ["the rose is red and the sky is blue", "roses and violets and the morning dew"] * 6
    (poems / "train.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    (poems / "validation.jsonl").write_text(json.dumps({"text": " ".join(lines[:2])}) + "\n")
    code = tmp_path / "code.txt"
    code.write_text("\n".join(["def f(x): return x + 1", "for i in range(10): print(i)"] * 8) + "\n")
    return write_corpora(
        tmp_path,
        {
            "poems": {"path": str(poems), "description": "rhymes"},
            "code": {"path": str(code), "enabled": True, "overrides": {"validation_split_percentage": 25}},
            "off": {"path": str(tmp_path / "missing"), "enabled": False},
        },
    )


def test_the_installed_command_trains_each_corpus_from_outside_the_repository_then_skips_finished(
    corpora, tmp_path, capsys, monkeypatch
):
    """diff-train-corpora launches each run as `python -m diff_trainer.cli.train`, not ./run_clm_diff.py, so it
    trains from a directory that is not the repository's."""
    command = shutil.which("diff-train-corpora", path=os.path.dirname(sys.executable))
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [command, str(corpora), "--all"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for name in ("poems", "code"):
        model_dir = tmp_path / "outputs" / name
        assert (model_dir / "train_results.json").is_file() and (model_dir / "tokenizer.json").is_file()
        run = yaml.safe_load((model_dir / "run_config.yaml").read_text())
        assert run["output_dir"] == str(model_dir) and run["diffusion_objective"] == "sedd_uniform"
        assert len((tmp_path / "outputs" / f"{name}_samples.txt").read_text().splitlines()) == 2
        assert f"== {name}" in out and "[new]" in out
    assert "off" not in [line.split()[0] for line in out.splitlines()[-3:]]
    table = out.splitlines()[-4:]
    assert table[0].split()[:2] == ["corpus", "train"] and table[2].startswith("poems") and table[3].startswith("code")
    assert table[2].split()[3] == "2"  # steps
    assert (
        yaml.safe_load((tmp_path / "outputs" / "code" / "run_config.yaml").read_text())["validation_split_percentage"]
        == 25
    )

    monkeypatch.chdir(ROOT)
    train_corpora.main([str(corpora), "--dataset", "poems"])
    assert "[finished]" in capsys.readouterr().out


def test_bad_corpora(corpora, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        train_corpora.main([str(corpora), "--dataset", "off"])
    assert "has path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_corpora.main([str(corpora), "--dataset", "nope"])
    assert "has no corpus nope" in capsys.readouterr().err
    (tmp_path / "outputs" / "poems" / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(SystemExit):
        train_corpora.main([str(corpora), "--dataset", "poems"])
    assert "pass --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_corpora.main([str(corpora), "--all", "--max_steps", "0"])
    assert "--max_steps 0: give at least 1" in capsys.readouterr().err
    bad = write_corpora(tmp_path, {"x": {"path": "a", "color": "red"}})
    with pytest.raises(SystemExit):
        train_corpora.main([str(bad), "--all"])
    assert "unknown keys ['color']" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../../escaped", "{tmp}/escaped", "a/b", "..", "~root", "a\\b", ""])
def test_a_corpus_name_is_a_name_not_a_path(corpora, tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(ROOT)
    name = name.format(tmp=tmp_path)
    bad = write_corpora(tmp_path, {name: {"path": str(tmp_path / "code.txt")}})
    with pytest.raises(SystemExit) as stopped:
        train_corpora.main([str(bad), "--all"])
    assert stopped.value.code == 2
    assert f"corpus name {name!r} is" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "escaped").exists()
    assert not (tmp_path.parent / "escaped").exists()


def test_shipped_corpora_file_resolves(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = train_corpora.load_corpora("configs/corpora.yaml")
    assert set(config["datasets"]) == {"docstrings", "fortunes"}
    for name in config["datasets"]:
        flags = train_corpora.run_config(config, name, "configs/corpora.yaml")
        assert Path(flags["train_file"]).is_file() and Path(flags["validation_file"]).is_file()
        assert flags["output_dir"] == f"outputs/{name}"
    assert train_corpora.run_config(config, "fortunes", "configs/corpora.yaml")["max_steps"] == 400
    assert train_corpora.run_config(config, "fortunes", "configs/corpora.yaml", max_steps=7)["max_steps"] == 7
