"""`diff-train-corpora`: one model per corpus from one YAML file, then samples and a summary table.

    diff-train-corpora configs/corpora.yaml --all
    diff-train-corpora configs/corpora.yaml --dataset fortunes --resume
    diff-train-corpora configs/corpora.yaml --all --max_steps 150    # a shorter run of every corpus

The file holds `datasets: {name: {path, enabled, description, overrides}}`, the `run_clm_diff.py` flags shared by
every corpus (`train`), the sampling settings (`samples`) and `output_root`. A corpus `path` is a directory holding
`train.*` (and optionally `validation.*`) data files, or one data file. Each corpus is trained by
`run_clm_diff.py <output_root>/<name>/run_config.yaml` into `<output_root>/<name>/` (training_runs.py: a finished
corpus is skipped, an interrupted one is continued with --resume).
Samples go to `<output_root>/<name>_samples.txt`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from diff_trainer.cli import generate
from diff_trainer.cli.training_runs import RunError, name_problem, refuse_interrupted, train_unless_finished

DATA_SUFFIXES = (".jsonl.zst", ".jsonl", ".json", ".txt", ".csv", ".parquet", ".json.gz")


class CorporaError(RunError):
    """A corpora file that cannot be used as written."""


def load_corpora(path: str) -> dict:
    """The parsed corpora file, checked: every corpus has a path and known keys."""
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, dict) or not isinstance(config.get("datasets"), dict) or not config["datasets"]:
        raise CorporaError(f"{path}: expected a mapping with a non-empty `datasets:` section.")
    for name, corpus in config["datasets"].items():
        if name_problem(name):
            raise CorporaError(f"{path}: corpus name {name!r} {name_problem(name)}; rename it.")
        if not isinstance(corpus, dict) or "path" not in corpus:
            raise CorporaError(f"{path}: corpus {name!r} needs a `path`.")
        unknown = set(corpus) - {"path", "enabled", "description", "overrides"}
        if unknown:
            raise CorporaError(
                f"{path}: corpus {name!r} has unknown keys {sorted(unknown)} "
                "(allowed: path, enabled, description, overrides)."
            )
    return config


def data_files(corpus_path: Path, name: str, source: str) -> dict:
    """run_clm_diff flags for a corpus path: train_file (and validation_file when the directory has one)."""
    if corpus_path.is_file():
        return {"train_file": str(corpus_path)}
    if not corpus_path.is_dir():
        raise CorporaError(
            f"{source}: corpus {name!r} has path {corpus_path}, which does not exist; fix the path "
            "or set `enabled: false`."
        )
    found = {}
    for split, flag in (("train", "train_file"), ("validation", "validation_file")):
        for suffix in DATA_SUFFIXES:
            candidate = corpus_path / f"{split}{suffix}"
            if candidate.is_file():
                found[flag] = str(candidate)
                break
    if "train_file" not in found:
        raise CorporaError(
            f"{source}: corpus {name!r}: {corpus_path} holds no train file (train{' / train'.join(DATA_SUFFIXES)})."
        )
    return found


def run_config(config: dict, name: str, source: str, max_steps: int | None = None) -> dict:
    """The run_clm_diff flags of one corpus: train and evaluate, the shared `train` flags, its data files and output
    dir, its overrides, then `max_steps` when given (it replaces every corpus's own)."""
    corpus = config["datasets"][name]
    output_dir = Path(config.get("output_root", "outputs")) / name
    flags = {
        "do_train": True,
        "do_eval": True,
        **(config.get("train") or {}),
        **data_files(Path(corpus["path"]), name, source),
        "output_dir": str(output_dir),
        **(corpus.get("overrides") or {}),
    }
    return flags if max_steps is None else {**flags, "max_steps": max_steps}


def write_samples(output_dir: Path, samples_file: Path, settings: dict) -> list[str]:
    """Unconditional samples of a trained corpus model (diff-generate), one per line."""
    argv = ["--model", str(output_dir), "--output", str(samples_file)]
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    generate.main(argv)
    return samples_file.read_text(encoding="utf-8").splitlines()


def summary_row(name: str, flags: dict, output_dir: Path, samples: list[str]) -> dict:
    """corpus, training-file size, steps, ELBO-perplexity bound, and the start of the first sample."""
    state_file = output_dir / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    results = output_dir / "eval_results.json"
    perplexity = json.loads(results.read_text()).get("eval_elbo_perplexity") if results.is_file() else None
    size = Path(flags["train_file"]).stat().st_size
    sample = (samples[0] if samples else "").replace("\\n", " ")[:48]
    return {
        "corpus": name,
        "size": f"{size / 1e3:.1f} kB",
        "steps": str(state.get("global_step", "-")),
        "elbo_ppl": "-" if perplexity is None else f"{perplexity:.2f}",
        "sample": sample,
    }


def format_table(rows: list[dict]) -> str:
    """A plain-text table, one column per key."""
    headers = {
        "corpus": "corpus",
        "size": "train file",
        "steps": "steps",
        "elbo_ppl": "ELBO-ppl (bound)",
        "sample": "sample",
    }
    widths = {key: max(len(title), *(len(row[key]) for row in rows)) for key, title in headers.items()}
    lines = ["  ".join(title.ljust(widths[key]) for key, title in headers.items())]
    lines.append("  ".join("-" * widths[key] for key in headers))
    lines += ["  ".join(row[key].ljust(widths[key]) for key in headers) for row in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-train-corpora", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="corpora YAML file (see configs/corpora.yaml)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every corpus with enabled: true")
    which.add_argument("--dataset", action="append", help="this corpus (repeat for several; runs even if disabled)")
    parser.add_argument("--resume", action="store_true", help="continue interrupted corpora from their checkpoints")
    parser.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help="train every selected corpus for this many steps (replaces the file's max_steps)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_corpora(args.config)
        names = args.dataset or [name for name, corpus in config["datasets"].items() if corpus.get("enabled", True)]
        unknown = [name for name in names if name not in config["datasets"]]
        if unknown:
            raise CorporaError(
                f"{args.config} has no corpus {', '.join(unknown)} (it has {', '.join(config['datasets'])})."
            )
        if args.max_steps is not None and args.max_steps < 1:
            raise CorporaError(f"--max_steps {args.max_steps}: give at least 1.")
        runs = {name: run_config(config, name, args.config, args.max_steps) for name in names}
    except (CorporaError, OSError, yaml.YAMLError) as error:
        parser.error(str(error))
    try:
        refuse_interrupted({name: Path(flags["output_dir"]) for name, flags in runs.items()}, args.resume)
    except RunError as error:
        parser.error(str(error))

    rows = []
    for name, flags in runs.items():
        try:
            train_unless_finished(name, flags, config["datasets"][name].get("description", ""))
        except RunError as error:
            parser.error(f"corpus {name}: {error}")
        output_dir = Path(flags["output_dir"])
        samples_file = output_dir.parent / f"{name}_samples.txt"
        samples = write_samples(output_dir, samples_file, config.get("samples") or {})
        rows.append(summary_row(name, flags, output_dir, samples))
    print(format_table(rows))


if __name__ == "__main__":
    main()
