"""End to end: run_clm_diff.main trains a tiny causal Llama on <DFF> data, evaluates, resumes, reuses saved rows."""

import importlib.util
import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from diff_trainer.data.pipeline import Preprocessor

SCRIPT = Path(__file__).resolve().parents[2] / "run_clm_diff.py"
_spec = importlib.util.spec_from_file_location("run_clm_diff", SCRIPT)
run_clm_diff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_clm_diff)

TINY_LLAMA = (
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,"
    "num_key_value_heads=4,max_position_embeddings=64"
)


@pytest.fixture
def train_file(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "train.jsonl"
    with open(path, "w") as handle:
        for _ in range(40):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            handle.write(json.dumps({"text": f"{a}+{b}=<DFF>{a + b}"}) + "\n")
    return str(path)


def common_flags(output_dir):
    return [
        "--model_type",
        "llama",
        "--config_overrides",
        TINY_LLAMA,
        "--tokenizer_name",
        "byte",
        "--block_size",
        "16",
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "8",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]


@pytest.fixture
def captured_rows(monkeypatch):
    """Every DatasetDict that Preprocessor.run hands to the trainer, in call order."""
    outputs = []
    original = Preprocessor.run

    def spy(self, raw):
        final, layout = original(self, raw)
        outputs.append(final)
        return final, layout

    monkeypatch.setattr(Preprocessor, "run", spy)
    return outputs


def next_token_metrics(model_dir, rows):
    """Causal eval_loss and eval_accuracy recomputed from the saved model: position i-1 predicts labelled token i."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids, labels = torch.tensor(rows["input_ids"]), torch.tensor(rows["labels"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.tensor(rows["attention_mask"])).logits.double()
    predicted, targets = logits[:, :-1], labels[:, 1:]
    scored = targets != -100
    ce = torch.nn.functional.cross_entropy(predicted[scored], targets[scored])
    accuracy = (predicted.argmax(-1)[scored] == targets[scored]).double().mean()
    return ce.item(), accuracy.item()


def test_train_evaluate_and_resume(tmp_path, train_file, caplog, captured_rows):
    out = tmp_path / "out"
    flags = common_flags(out) + [
        "--train_file",
        train_file,
        "--validation_split_percentage",
        "20",
        "--save_steps",
        "3",
        "--do_train",
        "--do_eval",
        "--learning_rate",
        "1e-2",
    ]
    run_clm_diff.main(flags + ["--max_steps", "3"])
    validation = captured_rows[0]["validation"]
    assert len(validation) == 8  # one eval batch, so eval_loss is the mean over all its labelled tokens

    assert (out / "checkpoint-3" / "model.safetensors").exists()
    assert (out / "model.safetensors").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 32
    assert "diffusion_config" not in config
    metrics = json.loads((out / "eval_results.json").read_text())
    expected_loss, expected_accuracy = next_token_metrics(out, validation[:])
    assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(expected_loss), rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(expected_accuracy, abs=1e-9)
    assert 0 < expected_accuracy < 1  # a value that a wrong shift would change
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3

    with caplog.at_level(logging.INFO, logger="diff_trainer"):
        run_clm_diff.main(flags + ["--max_steps", "4", "--resume", "--log_level", "info"])
    assert f"Resuming from {out / 'checkpoint-3'}" in caplog.text
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_saved_final_dataset_is_trained_on_again(tmp_path, train_file, captured_rows):
    saved = tmp_path / "final"
    run_clm_diff.main(
        common_flags(tmp_path / "prepare")
        + ["--train_file", train_file, "--validation_split_percentage", "20", "--save_final_dataset", str(saved)]
    )
    assert (saved / "dataset_dict.json").exists()

    out = tmp_path / "reuse"
    run_clm_diff.main(
        common_flags(out)
        + ["--dataset_name", str(saved), "--load_from_disk", "--skip_concat", "--do_train", "--max_steps", "1"]
    )
    prepared, reused = captured_rows
    assert list(reused) == ["train", "validation"]
    for name in prepared:
        assert reused[name].to_list() == prepared[name].to_list()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    assert (out / "model.safetensors").exists()


def test_preprocess_only_saves_rows_without_touching_a_trained_model(tmp_path, train_file, capsys):
    out = tmp_path / "out"
    flags = common_flags(out) + ["--train_file", train_file, "--validation_split_percentage", "20"]
    run_clm_diff.main(flags + ["--do_train", "--max_steps", "2", "--save_steps", "1"])
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}

    saved = tmp_path / "rows"
    run_clm_diff.main(
        flags
        + [
            "--do_train",
            "--do_eval",
            "--eval_strategy",
            "steps",
            "--max_steps",
            "1",
            "--save_final_dataset",
            str(saved),
            "--preprocess_only",
        ]
    )
    assert (saved / "dataset_dict.json").exists()
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before
    with pytest.raises(SystemExit) as exit_info:
        run_clm_diff.main(flags + ["--preprocess_only"])
    assert exit_info.value.code == 2
    assert "--preprocess_only writes the final rows: give --save_final_dataset DIR." in capsys.readouterr().err


def test_training_over_a_finished_model_needs_consent(tmp_path, train_file):
    out = tmp_path / "out"
    flags = common_flags(out) + [
        "--train_file",
        train_file,
        "--validation_split_percentage",
        "0",
        "--do_train",
        "--save_steps",
        "2",
    ]
    run_clm_diff.main(flags + ["--max_steps", "4"])
    model_bytes = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a trained model .*--overwrite_output_dir"):
        run_clm_diff.main(flags + ["--max_steps", "1"])
    assert (out / "model.safetensors").read_bytes() == model_bytes
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    run_clm_diff.main(flags + ["--max_steps", "1", "--save_strategy", "no", "--overwrite_output_dir"])
    assert not list(out.glob("checkpoint-*"))  # a later --resume cannot pick up the replaced run
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
