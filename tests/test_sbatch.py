"""The Slurm job scripts in sbatch/, run on a real one-node Slurm cluster on localhost.

The cluster is started with .ci/slurm.sh when it is not up (as root: it installs Debian's Slurm packages).
Multi-node launches cannot run on one machine: their command lines are checked with launch.sh's DRY_RUN=1, which
needs no cluster, so those tests run everywhere.
"""

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from datasets import load_from_disk

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 300


def node_is_ready() -> bool:
    """True when `sinfo` answers and the node localhost can take jobs."""
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(
        ["sinfo", "--noheader", "--nodes=localhost", "--format=%t"], capture_output=True, text=True, timeout=30
    )
    return result.returncode == 0 and result.stdout.strip() in ("idle", "mix", "alloc")


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node cluster: as root, brought up (or checked) by .ci/slurm.sh; otherwise one already up."""
    if os.geteuid() != 0:
        if node_is_ready():
            return
        pytest.skip("no Slurm cluster is up, and installing and starting one with .ci/slurm.sh needs root")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    # pytest-xdist may run this fixture in two workers at once: one .ci/slurm.sh at a time
    with open(os.path.join(tempfile.gettempdir(), "diff-trainer-slurm.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f".ci/slurm.sh failed:\n{result.stdout}\n{result.stderr}"
    assert node_is_ready()


LAUNCH_VARIABLES = (
    "VENV",
    "REPO_DIR",
    "GPUS_PER_NODE",
    "CPU_PROCESSES_PER_NODE",
    "MAIN_PROCESS_PORT",
    "ACCELERATE_ARGS",
    "DRY_RUN",
)


def job_environment(**variables) -> dict:
    """This environment (sbatch exports it to the job) without Slurm's and the launcher's variables, plus the venv
    of this Python, offline HF settings and `variables`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SLURM_") and name not in LAUNCH_VARIABLES
    }
    if sys.prefix != sys.base_prefix:
        env["VENV"] = sys.prefix
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **variables)
    return env


def submit_and_wait(job_script: str, args: list, log_dir: Path, cpus: int, **variables) -> tuple[str, str]:
    """`sbatch --wait` a job script from the repository root; returns (final job state, job log)."""
    command = [
        "sbatch",
        "--wait",
        f"--cpus-per-task={cpus}",
        f"--chdir={REPO}",
        f"--output={log_dir}/%x-%j.out",
        str(REPO / "sbatch" / job_script),
        *args,
    ]
    result = subprocess.run(
        command, env=job_environment(**variables), capture_output=True, text=True, timeout=JOB_TIMEOUT
    )
    submitted = re.search(r"Submitted batch job (\d+)", result.stdout)
    assert submitted, f"sbatch did not submit the job: {result.stderr}"
    job_id = submitted.group(1)
    (log_file,) = log_dir.glob(f"*-{job_id}.out")
    log = log_file.read_text()
    assert result.returncode == 0, f"job {job_id} failed ({result.stderr.strip()}):\n{log[-3000:]}"
    details = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return re.search(r"JobState=(\S+)", details).group(1), log


TINY_RUN = ["--max_train_samples", "64", "--max_eval_samples", "16", "--block_size", "64"]


def test_train_job_trains_two_cpu_processes_and_saves_a_checkpoint(slurm_cluster, tmp_path):
    output_dir = tmp_path / "run"
    state, log = submit_and_wait(
        "train.sbatch",
        [
            "configs/demo.yaml",
            "--max_steps",
            "2",
            "--output_dir",
            str(output_dir),
            *TINY_RUN,
            "--per_device_train_batch_size",
            "2",
            "--do_eval",
            "false",
            "--eval_strategy",
            "no",
            "--save_steps",
            "2",
            "--logging_steps",
            "1",
            "--log_level",
            "info",
            "--disable_tqdm",
            "true",
        ],
        tmp_path,
        cpus=2,
        CPU_PROCESSES_PER_NODE="2",
    )
    assert state == "COMPLETED"
    assert "1 node(s) x 2 process(es) on CPU" in log
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in log  # 2 processes x 2 rows
    assert len(re.findall(r"\{'loss': ", log)) == 2 and "train_loss" in log
    checkpoint = output_dir / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    config = json.loads((output_dir / "config.json").read_text())
    assert config["is_causal"] is False and config["diffusion_config"]["objective"] == "masked_diffusion"


def test_preprocess_job_saves_the_final_rows_without_training(slurm_cluster, tmp_path):
    final_dir, output_dir = tmp_path / "final", tmp_path / "run"
    state, log = submit_and_wait(
        "preprocess.sbatch",
        ["configs/demo.yaml", "--save_final_dataset", str(final_dir), "--output_dir", str(output_dir), *TINY_RUN],
        tmp_path,
        cpus=1,  # one CPU: no worker processes (datasets would spawn a pool even for num_proc=1)
    )
    assert state == "COMPLETED"
    assert "Saved the final dataset" in log and str(final_dir) in log
    final = load_from_disk(str(final_dir))
    assert set(final) == {"train", "validation"}
    for split in final.values():
        assert len(split) > 0 and {"input_ids", "labels"} <= set(split.column_names)
        assert {len(row) for row in split["input_ids"]} == {64}
    assert not list(output_dir.glob("checkpoint-*")) and not (output_dir / "model.safetensors").exists()
    assert "eval_loss" not in log and "train_loss" not in log


def dry_run(command: list, **slurm_variables) -> dict:
    """Run a launcher with DRY_RUN=1 in a fake Slurm job; returns {node id: the accelerate argv that node runs}."""
    env = job_environment(DRY_RUN="1", SLURM_JOB_ID="4242", **slurm_variables)
    result = subprocess.run(["bash", *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"^\[node (\d+)\] (.*)$", result.stdout, flags=re.MULTILINE)
    return {int(node): shlex.split(line) for node, line in lines}


def split_launch(argv: list, script: str) -> tuple[dict, list]:
    """(accelerate launch flags as {flag: value or True}, the script's own arguments)."""
    assert argv[:2] == ["accelerate", "launch"]
    script_at = argv.index(script)
    flags, tokens = {}, argv[2:script_at]
    for position, token in enumerate(tokens):
        if token.startswith("--"):
            following = tokens[position + 1] if position + 1 < len(tokens) else "--"
            flags[token] = True if following.startswith("--") else following
    return flags, argv[script_at + 1 :]


def test_two_gpu_nodes_each_get_their_machine_rank():
    per_node = dry_run(
        ["sbatch/launch.sh", "run_clm_diff.py", "configs/demo.yaml", "--run_name", "two words"],
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="gpu-[07-08]",
        SLURM_GPUS_ON_NODE="4",
        SLURM_CPUS_PER_TASK="32",
    )
    assert sorted(per_node) == [0, 1]
    for node_id, argv in per_node.items():
        flags, script_args = split_launch(argv, "run_clm_diff.py")
        assert flags["--machine_rank"] == str(node_id)
        assert flags["--num_machines"] == "2" and flags["--num_processes"] == "8"  # 2 nodes x 4 GPUs
        assert flags["--main_process_ip"] == "gpu-07" and flags["--main_process_port"] == "24242"
        assert flags["--rdzv_backend"] == "c10d" and flags["--multi_gpu"] is True
        assert flags["--num_cpu_threads_per_process"] == "8"
        assert script_args == ["configs/demo.yaml", "--run_name", "two words"]


@pytest.mark.parametrize("nodes, processes_per_node", [(1, 1), (2, 2)])
def test_cpu_nodes_fall_back_to_use_cpu(nodes, processes_per_node):
    per_node = dry_run(
        ["sbatch/launch.sh", "run_clm_diff.py", "configs/demo.yaml"],
        SLURM_NNODES=str(nodes),
        SLURM_JOB_NODELIST="cpu-[1-2]" if nodes == 2 else "cpu-1",
        SLURM_CPUS_ON_NODE="4",
        CPU_PROCESSES_PER_NODE=str(processes_per_node),
    )
    assert sorted(per_node) == list(range(nodes))
    for node_id, argv in per_node.items():
        flags, script_args = split_launch(argv, "run_clm_diff.py")
        assert flags["--machine_rank"] == str(node_id) and flags["--main_process_ip"] == "cpu-1"
        assert flags["--num_processes"] == str(nodes * processes_per_node)
        assert ("--multi_gpu" in flags) == (nodes * processes_per_node > 1)
        assert flags["--num_cpu_threads_per_process"] == str(4 // processes_per_node)
        assert script_args == ["configs/demo.yaml", "--use_cpu", "true"]


def test_dpo_job_launches_the_dpo_script():
    per_node = dry_run(
        ["sbatch/dpo.sbatch", "configs/dpo.yaml", "--max_steps", "3"],
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="gpu-[1-2]",
        SLURM_GPUS_ON_NODE="2",
    )
    assert sorted(per_node) == [0, 1]
    for node_id, argv in per_node.items():
        flags, script_args = split_launch(argv, "run_diffusion_dpo.py")
        assert flags["--machine_rank"] == str(node_id) and flags["--num_processes"] == "4"
        assert script_args == ["configs/dpo.yaml", "--max_steps", "3"]
