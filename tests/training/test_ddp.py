"""Two-process CPU DDP gives the first step of one process on the same global batch: loss and gradient norm, for every
loss normalization of masked diffusion and for block diffusion.

The runs use the cosine schedule at `--time_eps 1`: every trainable token is masked (so one process and two draw the
same masks; for block diffusion, every token of every block) and each carries the weight -α'(1)/(1-α(1)) = π/2, not
1, so a lost or doubled weight shows.
"""

import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from conftest import accelerate_launch
from diff_trainer.diffusion.losses import LOSS_NORMALIZATIONS

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("run_clm_diff", ROOT / "run_clm_diff.py")
run_clm_diff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_clm_diff)

TINY_LLAMA = (
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,"
    "num_key_value_heads=4,max_position_embeddings=64"
)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "train.jsonl"
    with open(path, "w") as handle:
        for i, length in enumerate([3, 9, 5, 14]):  # 4 rows = exactly one global batch
            handle.write(json.dumps({"text": f"q{i}<DFF>" + "ab" * length}) + "\n")
    return path


def run_flags(train_file, output_dir, per_device_batch: int, normalization: str, schedule: str) -> list[str]:
    return [
        "--train_file",
        str(train_file),
        "--model_type",
        "llama",
        "--config_overrides",
        TINY_LLAMA,
        "--tokenizer_name",
        "byte",
        "--block_size",
        "32",
        "--validation_split_percentage",
        "0",
        "--train_diff_model",
        "--noise_schedule",
        schedule,
        "--time_eps",
        "1.0",
        "--loss_normalization",
        normalization,
        "--output_dir",
        str(output_dir),
        "--do_train",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        str(per_device_batch),
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--use_cpu",
        "--save_strategy",
        "no",
        "--seed",
        "7",
        "--disable_tqdm",
        "true",
    ]


def first_step(output_dir) -> dict:
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        return json.load(handle)["log_history"][0]


BLOCK_FLAGS = [
    "--diffusion_objective",
    "block",
    "--diffusion_block_size",
    "4",
    "--shift_logits",
    "--padding_side",
    "right",
]
# every loss normalization of masked diffusion, and block diffusion: (normalization, extra flags)
CASES = {**{name: (name, []) for name in LOSS_NORMALIZATIONS}, "block": ("llada_sft", BLOCK_FLAGS)}


def test_two_process_ddp_matches_one_process(tmp_path, train_file):
    """One launch of two processes runs every case (tests/launched_runs.py); each equals its one-process run."""
    runs = [
        ["diff_trainer.cli.train", [*run_flags(train_file, tmp_path / case / "two", 2, name, "cosine"), *extra]]
        for case, (name, extra) in CASES.items()
    ]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [*accelerate_launch(tmp_path), str(ROOT / "tests" / "launched_runs.py"), str(tmp_path / "runs.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    for case, (name, extra) in CASES.items():
        run_clm_diff.main([*run_flags(train_file, tmp_path / case / "one", 4, name, "cosine"), *extra])
        single, double = first_step(tmp_path / case / "one"), first_step(tmp_path / case / "two")
        assert single["loss"] > 0 and single["grad_norm"] > 0, case
        assert double["loss"] == pytest.approx(single["loss"], rel=1e-4), case
        assert double["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4), case


def test_cosine_weight_at_full_masking_scales_loss_and_gradient_by_half_pi(tmp_path, train_file):
    # Same seed, same masks (all of them): only the schedule's weight differs, 1 for linear and π/2 for cosine.
    run_clm_diff.main(run_flags(train_file, tmp_path / "linear", 4, "llada_sft", "linear"))
    run_clm_diff.main(run_flags(train_file, tmp_path / "cosine", 4, "llada_sft", "cosine"))
    linear, cosine = first_step(tmp_path / "linear"), first_step(tmp_path / "cosine")
    assert cosine["loss"] == pytest.approx(linear["loss"] * math.pi / 2, rel=1e-4)
    assert cosine["grad_norm"] == pytest.approx(linear["grad_norm"] * math.pi / 2, rel=1e-4)
