"""Helpers shared by the benchmark scripts: repository paths, the demo configs, machine facts, markdown tables,
result files and hash-keyed caches of built artefacts."""

import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
CACHE_KEY_FILE = "benchmark_cache_key.json"
DEMO_DIFFUSION_CONFIG = os.path.join(REPO_ROOT, "configs", "demo.yaml")
DEMO_CLM_CONFIG = os.path.join(REPO_ROOT, "configs", "demo_clm.yaml")

if REPO_ROOT not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repository, on sys.path
    sys.path.insert(0, REPO_ROOT)


def read_config(path: str) -> dict:
    """A yaml config of run_clm_diff.py as a dict."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def machine_summary(threads: int = None) -> str:
    """One line naming the machine (CPU cores, GPU, load average), torch threads and library versions."""
    import datasets
    import tokenizers
    import torch
    import transformers

    threads = threads if threads is not None else torch.get_num_threads()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores, {gpu}, load average {load_average()}; torch {torch.__version__} "
        f"({threads} threads), transformers {transformers.__version__}, datasets {datasets.__version__}, "
        f"tokenizers {tokenizers.__version__}, Python {platform.python_version()}"
    )


def load_average() -> str:
    """The 1-minute load average: above the CPU count, other processes were competing for the cores."""
    return f"{os.getloadavg()[0]:.1f}"


def quiet() -> None:
    """No progress bars or library warnings between the benchmark's own lines."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats get 3 significant decimals."""

    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes (e.g. datasets' workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@contextmanager
def stopwatch(wall: list, cpu: list = None):
    """Append the block's wall-clock seconds to `wall` and, if given, its CPU seconds (children included) to `cpu`.

    CPU time hardly changes when other processes compete for the cores; wall time does.
    """
    start, start_cpu = time.perf_counter(), cpu_seconds()
    try:
        yield
    finally:
        wall.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(cpu_seconds() - start_cpu)


def median(values) -> float:
    return statistics.median(values)


class _Tee:
    """A text stream writing to several streams."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()


@contextmanager
def results_file(name: str, quick: bool = False):
    """Everything the block prints also goes to benchmarks/results/<name>[_quick].md, under a header naming the
    command, the date and the machine: the README's figures link there, so each can be traced to a run.

    The file is written next to it and renamed at the end, so an interrupted run leaves the previous one in place.
    """
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}{'_quick' if quick else ''}.md")
    partial = f"{path}.{os.getpid()}.partial"  # two runs of one benchmark at a time each write their own
    command = "python " + shlex.join([os.path.relpath(sys.argv[0], REPO_ROOT), *sys.argv[1:]])
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(
            f"# {name}\n\nCommand: `{command}`  \nStarted: "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
            f"Machine: {machine_summary()}\n\n```\n"
        )
        original = sys.stdout
        sys.stdout = _Tee(original, handle)
        try:
            yield path
        finally:
            sys.stdout = original
        handle.write(
            f"```\n\nFinished: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
            f"load average {load_average()}.\n"
        )
    os.replace(partial, path)
    print(f"Results written to {os.path.relpath(path, REPO_ROOT)}")


def run_logged(command: list[str], log_path: str, threads: int, what: str) -> None:
    """Run `command` from the repository root with `threads` OpenMP threads, its output into `log_path`; on failure
    print the log's tail and exit naming `what`."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log:
        finished = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment)
    if finished.returncode != 0:
        with open(log_path) as log:
            sys.stderr.write(log.read()[-4000:])
        raise SystemExit(f"{what} failed with exit code {finished.returncode}")


def content_hash(*paths: str) -> str:
    """SHA-256 over the files under `paths` (names relative to each path, and bytes), cache key files excluded."""
    digest = hashlib.sha256()
    for root in paths:
        files = (
            [root]
            if os.path.isfile(root)
            else sorted(
                os.path.join(folder, name)
                for folder, _, names in os.walk(root)
                for name in names
                if name != CACHE_KEY_FILE
            )
        )
        for path in files:
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def cached_build(directory: str, settings: dict, inputs: list[str], build, label: str) -> str:
    """Reuse `directory` only if it was built with exactly these `settings` from inputs with these contents.

    The key (settings + SHA-256 of every input file or directory) is stored in the directory with the hash of what
    was built; a changed setting, a changed input (e.g. a retrained model) or a modified artefact means a rebuild:
    `build(directory)` runs on an empty directory. Prints what was reused or rebuilt, and why.
    """
    key = {"settings": settings, "inputs": {os.path.relpath(path, REPO_ROOT): content_hash(path) for path in inputs}}
    key_path = os.path.join(directory, CACHE_KEY_FILE)
    reason = "nothing cached"
    if os.path.exists(key_path):
        with open(key_path, encoding="utf-8") as handle:
            stored = json.load(handle)
        if stored.get("key") != key:
            reason = "settings or inputs changed"
        elif stored.get("output_hash") != content_hash(directory):
            reason = "the cached files were modified"
        else:
            print(
                f"Reused {label}: {os.path.relpath(directory, REPO_ROOT)} (same settings, inputs and files; "
                f"hash {stored['output_hash'][:12]}).",
                flush=True,
            )
            return directory
    elif os.path.exists(directory):
        reason = "no cache key (made by hand or by an older script)"
    print(f"Building {label} into {os.path.relpath(directory, REPO_ROOT)} ({reason}) ...", flush=True)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    build(directory)
    with open(key_path, "w", encoding="utf-8") as handle:
        json.dump({"key": key, "output_hash": content_hash(directory)}, handle, indent=1)
    return directory


def train_twins(
    bench_dir: str,
    config: str,
    data_dir: str,
    causal_flags: list[str],
    threads: int | None = None,
    max_steps: int | None = None,
    seconds: dict | None = None,
) -> dict[str, str]:
    """A diffusion model and its causal twin (`causal_flags` added) trained with run_clm_diff.py `config` on
    data_dir/train.jsonl, each reused when its settings and inputs match (`cached_build`); {"diffusion": dir,
    "causal": dir}. Training minutes go into `seconds` when given."""
    import subprocess

    models = {}
    for name, flags in (("diffusion", []), ("causal", causal_flags)):
        extra = [*flags, "--train_file", os.path.join(data_dir, "train.jsonl")]
        extra += ["--max_steps", str(max_steps)] if max_steps else []

        def train(out, extra=extra, name=name):
            environment = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "run_clm_diff.py", config, *extra, "--output_dir", out],
                cwd=REPO_ROOT,
                env=environment,
                check=True,
            )
            if seconds is not None:
                seconds[f"training the {name} model"] = time.perf_counter() - start

        models[name] = cached_build(
            os.path.join(bench_dir, name),
            {"flags": flags, "max_steps": max_steps},
            [os.path.join(REPO_ROOT, config), data_dir],
            train,
            f"the {name} model",
        )
    return models
