"""Training runs launched one after another by the multi-run commands (diff-train-corpora, diff-train-cascade): each
run's flags are written to `<output_dir>/run_config.yaml` and trained in a fresh process (`python -m
diff_trainer.cli.train`, the code of run_clm_diff.py, so the commands work from any directory);
a finished run (it has train_results.json, written after the final model) is skipped, an interrupted one (it has
checkpoint-N directories but no results) is continued with --resume.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

FINISHED_FILE = "train_results.json"
TRAIN_COMMAND = (sys.executable, "-m", "diff_trainer.cli.train")


class RunError(ValueError):
    """A run that cannot be started or did not finish."""


def name_problem(name) -> str | None:
    """Why `name` cannot name a run directory under the output root (None when it can): a name is one path part."""
    if not isinstance(name, str) or not name.strip():
        return "is empty or not text"
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or name.startswith("~"):
        return "is not a plain name (no /, \\, ~, . or ..): it would put the run outside output_root"
    return None


def status(output_dir: Path) -> str:
    """ "finished", "interrupted" (checkpoints, no results) or "new"."""
    if (output_dir / FINISHED_FILE).is_file():
        return "finished"
    if output_dir.is_dir() and any(output_dir.glob("checkpoint-*")):
        return "interrupted"
    return "new"


def refuse_interrupted(output_dirs: dict[str, Path], resume: bool) -> None:
    """A RunError naming the interrupted runs, unless --resume continues them."""
    interrupted = [name for name, output_dir in output_dirs.items() if status(output_dir) == "interrupted"]
    if interrupted and not resume:
        raise RunError(
            f"{', '.join(interrupted)}: interrupted run(s) in "
            f"{', '.join(str(output_dirs[name]) for name in interrupted)}; pass --resume to continue "
            "them, or delete their directories to start over."
        )


def train(flags: dict, resume: bool) -> None:
    """Write the run's run_config.yaml and train on it in a fresh process."""
    output_dir = Path(flags["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    config_file = output_dir / "run_config.yaml"
    config_file.write_text(yaml.safe_dump(flags, sort_keys=False), encoding="utf-8")
    command = [*TRAIN_COMMAND, str(config_file)] + (["--resume", "true"] if resume else [])
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as error:
        raise RunError(
            f"run_clm_diff.py {config_file} failed (exit status {error.returncode}); its log is above."
        ) from None
    if status(output_dir) != "finished":
        raise RunError(f"run_clm_diff.py {config_file} ended without {FINISHED_FILE} in {output_dir}.")


def train_unless_finished(name: str, flags: dict, description: str = "") -> str:
    """Train the run `name` (continuing it when interrupted) unless it is finished; returns the state it had."""
    state = status(Path(flags["output_dir"]))
    print(f"== {name}: {description} [{state}]", flush=True)
    if state != "finished":
        train(flags, resume=state == "interrupted")
    return state
