"""Helpers shared by the benchmark scripts: repository paths, the demo configs, machine facts, markdown tables."""

import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIFFUSION_CONFIG = os.path.join(REPO_ROOT, "configs", "demo.yaml")
DEMO_CLM_CONFIG = os.path.join(REPO_ROOT, "configs", "demo_clm.yaml")

if REPO_ROOT not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repository, on sys.path
    sys.path.insert(0, REPO_ROOT)


def read_config(path: str) -> dict:
    """A yaml config of run_clm_diff.py as a dict."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def machine_summary(threads: int = None) -> str:
    """One line naming the CPU count, torch threads and library versions the numbers were measured with."""
    import datasets
    import tokenizers
    import torch
    import transformers

    threads = threads if threads is not None else torch.get_num_threads()
    return (f"{os.cpu_count()} CPUs, torch {torch.__version__} ({threads} threads), transformers "
            f"{transformers.__version__}, datasets {datasets.__version__}, tokenizers {tokenizers.__version__}, "
            f"Python {platform.python_version()}; load average {load_average()}")


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
