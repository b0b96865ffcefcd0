"""Two-process CPU DDP gives the same first-step loss as one process on the same global batch."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_LLAMA = ("hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,"
              "num_key_value_heads=4,max_position_embeddings=64")


def run_flags(tmp_path, output: str, per_device_batch: int, normalization: str) -> list[str]:
    # time_eps 1 masks every maskable token, so the loss is deterministic and comparable across runs
    return ["run_clm_diff.py", "--train_file", str(tmp_path / "train.jsonl"), "--model_type", "llama",
            "--config_overrides", TINY_LLAMA, "--tokenizer_name", "byte", "--block_size", "32",
            "--validation_split_percentage", "0", "--train_diff_model", "--time_eps", "1.0",
            "--loss_normalization", normalization, "--output_dir", str(tmp_path / output), "--do_train",
            "--max_steps", "1", "--per_device_train_batch_size", str(per_device_batch), "--logging_steps", "1",
            "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--seed", "7"]


def first_loss(output_dir) -> float:
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        return json.load(handle)["log_history"][0]["loss"]


@pytest.mark.parametrize("normalization", ["llada_sft", "token"])
def test_two_process_ddp_matches_one_process(tmp_path, normalization):
    with open(tmp_path / "train.jsonl", "w") as handle:
        for i, length in enumerate([3, 9, 5, 14]):  # 4 rows = exactly one global batch
            handle.write(json.dumps({"text": f"q{i}<DFF>" + "ab" * length}) + "\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *run_flags(tmp_path, "one", 4, normalization)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    ddp = subprocess.run([*launch, *run_flags(tmp_path, "two", 2, normalization)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert first_loss(tmp_path / "two") == pytest.approx(first_loss(tmp_path / "one"), rel=1e-4)
