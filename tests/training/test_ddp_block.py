"""Block diffusion under two-process CPU DDP: the first step equals one process on the same global batch.

The harness of test_ddp.py: cosine schedule at `--time_eps 1`, so every trainable token of every block is masked
(one process and two draw the same masks whatever their generators) and weighted π/2.
"""

import os
import subprocess

import pytest

from conftest import accelerate_launch
from training.test_ddp import ROOT, first_step, run_clm_diff, run_flags, train_file  # noqa: F401 (a fixture)

BLOCK_FLAGS = [
    "--diffusion_objective",
    "block",
    "--diffusion_block_size",
    "4",
    "--shift_logits",
    "--padding_side",
    "right",
]


def test_two_process_block_diffusion_matches_one_process(tmp_path, train_file):  # noqa: F811
    run_clm_diff.main([*run_flags(train_file, tmp_path / "one", 4, "llada_sft", "cosine"), *BLOCK_FLAGS])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            *accelerate_launch(tmp_path),
            "run_clm_diff.py",
            *run_flags(train_file, tmp_path / "two", 2, "llada_sft", "cosine"),
            *BLOCK_FLAGS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single, double = first_step(tmp_path / "one"), first_step(tmp_path / "two")
    assert single["loss"] > 0 and single["grad_norm"] > 0
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert double["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4)
