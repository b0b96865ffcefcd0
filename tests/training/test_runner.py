"""diff_trainer/training/runner.py: the headline metric a run ends with, the refusal to overwrite a trained model,
and the output directory's lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import accelerate_launch
from diff_trainer.data.loading import DataError
from diff_trainer.training.runner import (
    OUTPUT_DIR_LOCK,
    OutputDirLock,
    check_output_dir,
    first_to_report,
    headline,
    release_output_dir_locks,
    run_entry_point,
)


def test_headline_is_the_comparable_metric_of_each_kind_of_run():
    diffusion = {"eval_loss": 1.234, "eval_accuracy": 0.4, "eval_elbo_nll": 3.0884, "eval_elbo_perplexity": 21.94}
    assert headline(diffusion).startswith("eval_elbo_perplexity = 21.94: ELBO perplexity bound")
    assert "not compare it with a causal eval_loss" in headline(diffusion)
    assert headline({"eval_loss": 2.5, "perplexity": 12.18249}).startswith("perplexity = 12.18: perplexity")
    assert headline({"eval_loss": 0.6, "eval_rewards/accuracies": 0.75}).startswith("eval_rewards/accuracies = 0.75")
    assert headline({"eval_loss": 0.6}) is None


def arguments(output_dir, do_train=True, resume=False, overwrite=False):
    return SimpleNamespace(
        output_dir=str(output_dir),
        do_train=do_train,
        do_eval=False,
        resume=resume,
        resume_from_checkpoint=None,
        overwrite_output_dir=overwrite,
        process_index=0,
    )


def test_output_dir_check(tmp_path):
    check_output_dir(arguments(tmp_path / "missing"))
    (tmp_path / "logs.txt").write_text("not a model")
    check_output_dir(arguments(tmp_path))
    (tmp_path / "checkpoint-10").mkdir()
    with pytest.raises(ValueError, match="checkpoint-10"):
        check_output_dir(arguments(tmp_path))
    check_output_dir(arguments(tmp_path, resume=True))
    check_output_dir(arguments(tmp_path, do_train=False))
    check_output_dir(arguments(tmp_path, overwrite=True))
    release_output_dir_locks()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["logs.txt"]


ROOT = Path(__file__).resolve().parents[2]
TINY_LLAMA = (
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,"
    "num_key_value_heads=4,max_position_embeddings=64"
)


def training_flags(data, output_dir, max_steps):
    return [
        "--model_type",
        "llama",
        "--config_overrides",
        TINY_LLAMA,
        "--tokenizer_name",
        "byte",
        "--train_file",
        str(data),
        "--block_size",
        "16",
        "--output_dir",
        str(output_dir),
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--validation_split_percentage",
        "0",
        "--do_train",
        "--max_steps",
        str(max_steps),
        "--save_strategy",
        "no",
    ]


def test_a_second_run_into_the_same_output_dir_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, capsys):
    """Two real processes: a run holds output_dir; a second run exits naming it; once the first is killed, its
    stale lock is taken over and the second run trains and removes the lock at exit."""
    import run_clm_diff

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i}+{i}=<DFF>{2 * i}"}) + "\n" for i in range(8)))
    output_dir = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "run_clm_diff.py"), *training_flags(data, output_dir, 1_000_000)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        lock = output_dir / OUTPUT_DIR_LOCK
        deadline = time.monotonic() + 120
        while not lock.is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None and lock.is_file()
        assert run_entry_point(run_clm_diff.main, training_flags(data, output_dir, 1)) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert (
            f"--output_dir {output_dir} is in use by another training run (host {socket.gethostname()}, "
            f"pid {first.pid}, started "
            in err
            and f"delete {lock})" in err
        )
        assert not (output_dir / "config.json").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert json.loads(lock.read_text())["pid"] == first.pid  # a killed run leaves its lock
    assert run_entry_point(run_clm_diff.main, training_flags(data, output_dir, 1)) == 0
    assert (output_dir / "config.json").is_file() and not lock.exists()


def held_lock(output_dir, **owner):
    output_dir.mkdir(exist_ok=True)
    (output_dir / OUTPUT_DIR_LOCK).write_text(json.dumps(owner))


@pytest.mark.parametrize(
    "holder, job, taken",
    [
        ({"host": "node7", "pid": 1}, None, False),  # another machine: cannot be checked, so held
        ({"host": "node7", "pid": 1, "slurm_job_id": "42"}, "42", True),  # the same job, requeued onto another node
        ({"host": "node7", "pid": 1, "slurm_job_id": "41"}, "42", False),
        ({"host": "HERE", "pid": "PARENT"}, None, False),  # a live process on this host
        ({"host": "HERE", "pid": "SELF"}, None, True),  # this process's own earlier run
    ],
    ids=["other host", "same Slurm job", "other Slurm job", "live pid", "own pid"],
)
def test_which_locks_are_stale(tmp_path, monkeypatch, holder, job, taken):
    values = {"HERE": socket.gethostname(), "PARENT": os.getppid(), "SELF": os.getpid()}
    holder = {key: values.get(value, value) for key, value in holder.items()}
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    if job:
        monkeypatch.setenv("SLURM_JOB_ID", job)
    held_lock(tmp_path, **holder)
    lock = OutputDirLock(str(tmp_path))
    refusal = lock.acquire()
    assert (refusal is None) == taken
    on_disk = json.loads((tmp_path / OUTPUT_DIR_LOCK).read_text())
    assert on_disk == (lock.owner if taken else holder)
    if not taken:
        assert f"host {holder['host']}, pid {holder['pid']}" in refusal
    lock.release()
    assert (tmp_path / OUTPUT_DIR_LOCK).exists() != taken


def launcher_environment(monkeypatch, port: int, restart: int = 0) -> None:
    """The variables torchrun gives rank 1 of 2 (its agent's store at port `port`)."""
    for name, value in {
        "WORLD_SIZE": "2",
        "RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": str(restart),
    }.items():
        monkeypatch.setenv(name, value)


def test_only_the_first_process_of_a_launch_reports_its_error(monkeypatch, capsys):
    """The claim is a counter in the launcher's store: one claim per restart of the launch, none without a launch."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    agent_store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    launcher_environment(monkeypatch, agent_store.port)
    assert [first_to_report(), first_to_report()] == [True, False]
    launcher_environment(monkeypatch, agent_store.port, restart=1)  # torchrun restarted the workers
    assert first_to_report()

    def failing(argv):
        raise DataError("bad input, named")

    assert run_entry_point(failing) == 1  # status 1 on every process, the line from the first one only
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run_entry_point(failing) == 1
    assert capsys.readouterr().err.endswith(": error: bad input, named\n")


@pytest.mark.parametrize(
    "script, flags, status, message",
    [
        ("run_clm_diff.py", ["{train}"], 1, "--output_dir {held} already holds a trained model"),
        ("run_diffusion_dpo.py", ["--output_dir", "{tmp}/dpo", "--beta", "high"], 2, "invalid float value: 'high'"),
        ("run_diffusion_grpo.py", ["--output_dir", "{tmp}/grpo"], 1, "GRPO starts from a trained diffusion model"),
    ],
    ids=["clm: output_dir holds a model", "dpo: bad flag value", "grpo: no model"],
)
def test_an_error_every_process_hits_is_printed_once(tmp_path, script, flags, status, message):
    """A real two-process launch (CPU, gloo): the error line once in the combined output, no traceback (accelerate's
    own traceback of its launcher is left out with -q), a failing exit."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i}+{i}=<DFF>{2 * i}"}) + "\n" for i in range(8)))
    held = tmp_path / "held"
    held.mkdir()
    (held / "config.json").write_text("{}")
    fill = {"held": str(held), "tmp": str(tmp_path)}
    argv = [
        argument
        for flag in flags
        for argument in (training_flags(data, held, 1) if flag == "{train}" else [flag.format(**fill)])
    ]
    launched = subprocess.run(
        [*accelerate_launch(tmp_path), "-q", script, *argv, "--use_cpu", "--report_to", "none"],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = launched.stdout + launched.stderr
    assert launched.returncode != 0
    assert output.count(message.format(**fill)) == 1, output[-3000:]
    assert f"{script}: error: " in output and "Traceback" not in output, output[-3000:]
    assert f"exitcode  : {status}" in output  # accelerate's summary names the failed process with our status
