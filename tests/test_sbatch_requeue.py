"""A train job killed mid-run by a requeue resumes, as the requeued job, from the newest complete checkpoint.

Runs on the local one-node Slurm cluster (see tests/test_sbatch.py). Once the first checkpoint is complete the
training process is frozen (SIGSTOP, so it is surely mid-run) and the job is sent USR1, as
`#SBATCH --signal=B:USR1@300` does before the time limit: launch.sh requeues it, Slurm kills the training, and the
requeued run gets `--resume true`. A half-written checkpoint newer than every real one is planted before the kill,
so the resume must pass over it. Slurm holds a requeued job back until the old job's credential expires (10 s
in .ci/slurm.sh's cluster, 120 s by default); the test waits.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from test_sbatch import REPO, TINY_RUN, job_environment, slurm_cluster  # noqa: F401  (fixture)

MAX_STEPS, SAVE_STEPS = 30, 3
TINY_MODEL = (
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=4,"
    "max_position_embeddings=64"
)
PLANTED = "checkpoint-100000"


def job_state(job_id: str) -> tuple[str, int]:
    details = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return re.search(r"JobState=(\S+)", details).group(1), int(re.search(r"Restarts=(\d+)", details).group(1))


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def training_processes(output_dir: Path) -> list[int]:
    """Pids of this test's training processes: python processes whose command line names its output directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and b"python" in argv[0] and str(output_dir).encode() in argv:
            pids.append(int(entry.name))
    return pids


@pytest.mark.long
def test_a_requeued_train_job_resumes_from_the_newest_complete_checkpoint(slurm_cluster, tmp_path):  # noqa: F811
    output_dir = tmp_path / "run"
    command = [
        "sbatch",
        "--cpus-per-task=2",
        f"--chdir={REPO}",
        f"--output={tmp_path}/%x-%j.out",
        str(REPO / "sbatch" / "train.sbatch"),
        "configs/demo.yaml",
        "--config_overrides",
        TINY_MODEL,
        "--max_steps",
        str(MAX_STEPS),
        "--output_dir",
        str(output_dir),
        *TINY_RUN,
        "--per_device_train_batch_size",
        "4",
        "--do_eval",
        "false",
        "--eval_strategy",
        "no",
        "--save_steps",
        str(SAVE_STEPS),
        "--save_total_limit",
        "3",
        "--logging_steps",
        "10",
        "--log_level",
        "info",
        "--disable_tqdm",
        "true",
    ]
    submitted = subprocess.run(command, env=job_environment(), capture_output=True, text=True, timeout=60)
    job_id = re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1)
    try:
        wait_for(lambda: (output_dir / f"checkpoint-{SAVE_STEPS}" / "COMPLETE").exists(), 240, "the first checkpoint")
        for pid in training_processes(output_dir):
            os.kill(pid, signal.SIGSTOP)
        (output_dir / PLANTED).mkdir()
        (output_dir / PLANTED / "model.safetensors").write_bytes(b"\0" * 64)  # killed while writing: no state
        subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=30)
        wait_for(lambda: job_state(job_id) == ("PENDING", 1), 120, "the job to be requeued")
        # Slurm holds a requeued job back until the old job's credential expires (AuthInfo=cred_expire); starting
        # it earlier by hand races that expiry ("Job credential revoked"), so the test waits the hold out.
        state, restarts = wait_for(
            lambda: (lambda s: s if s[0] in ("COMPLETED", "FAILED", "CANCELLED") and s[1] else None)(job_state(job_id)),
            420,
            "the requeued job to finish",
        )
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    (log_file,) = tmp_path.glob(f"*-{job_id}.out")
    log = log_file.read_text()
    assert (state, restarts) == ("COMPLETED", 1), log[-3000:]
    assert f"USR1 received: requeueing job {job_id}" in log
    first_run, resumed_run = log.split(f"requeueing job {job_id}", 1)
    steps_before_kill = max(int(step) for step in re.findall(r"checkpoint-(\d+)", first_run) or [0])
    assert steps_before_kill < MAX_STEPS  # the first run was killed before the end
    assert (
        f"Skipping incomplete checkpoint {output_dir / PLANTED}: no COMPLETE marker and no trainer_state.json"
        in resumed_run
    )
    resumed_from = int(re.search(rf"Resuming from {re.escape(str(output_dir))}/checkpoint-(\d+)", resumed_run).group(1))
    assert resumed_from >= SAVE_STEPS and resumed_from % SAVE_STEPS == 0
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == MAX_STEPS
    assert (output_dir / f"checkpoint-{MAX_STEPS}" / "COMPLETE").is_file()
