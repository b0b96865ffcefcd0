"""`diff-train-cascade`: train the stages of a cascaded diffusion model in order, each from the one before.

    diff-train-cascade configs/cascade --stages 1 2 3
    diff-train-cascade configs/cascade --stages 1 2 3 --from_pretrained outputs/demo_diffusion
    diff-train-cascade configs/cascade --stages 3 --resume

The directory holds `cascade.yaml` (`dataset` and `model`, which name the runs, `output_root`, and `train`: the
run_clm_diff.py flags every stage shares) and one `stage{N}.yaml` per stage: `prefix` (the conditioning its records
carry before <DFF>: `none` for stage 1's `<DFF> K1`, `keywords` for `K1 <DFF> K2` and `K2 <DFF> text`) and the
stage's own run_clm_diff.py flags (its `train_file`, block size, --prefix_shuffle, ...). Stage N is trained into
`<output_root>/{dataset}-{model}-stage{N}` (with --from_pretrained CKPT: model is CKPT's directory name and the
runs end in `-finetuning`). Stage 1 starts from scratch (the `train` model flags) or from CKPT; stage N > 1 starts
from the finished stage N-1 run, or like stage 1 with --each_from_start. Finished stages are skipped, interrupted
ones continued with --resume (training_runs.py). Every stage's data is checked against its `prefix` first.
"""

from __future__ import annotations

import argparse
from itertools import islice
from pathlib import Path

import yaml

from diff_trainer.cli.training_runs import RunError, name_problem, refuse_interrupted, train_unless_finished
from diff_trainer.data.io import read_jsonl

CASCADE_FILE = "cascade.yaml"
CASCADE_KEYS = {"dataset", "model", "output_root", "train"}
PREFIX_FORMATS = ("none", "keywords")
# model flags that build a model from scratch; a stage starting from a checkpoint drops them
SCRATCH_FLAGS = ("model_type", "config_overrides", "config_name", "tokenizer_name")
RECORDS_CHECKED = 64


class CascadeError(RunError):
    """A cascade directory, stage file or stage data that cannot be used as written."""


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise CascadeError(f"{path} does not exist.")
    content = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict):
        raise CascadeError(f"{path}: expected a mapping of keys to values.")
    return content


def load_cascade(config_dir: Path) -> dict:
    """cascade.yaml, checked: dataset and model names, known keys only."""
    path = config_dir / CASCADE_FILE
    cascade = read_yaml(path)
    unknown = set(cascade) - CASCADE_KEYS
    if unknown:
        raise CascadeError(f"{path}: unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(CASCADE_KEYS))}).")
    for key in ("dataset", "model"):
        if key not in cascade:
            raise CascadeError(f"{path}: `{key}` (a name used in the run names) is missing.")
        if name_problem(cascade[key]):
            raise CascadeError(
                f"{path}: `{key}` {cascade[key]!r} (a name used in the run names) {name_problem(cascade[key])}."
            )
    return cascade


def load_stage(config_dir: Path, stage: int) -> tuple[str, dict]:
    """(prefix format, run_clm_diff flags) of stage{stage}.yaml."""
    path = config_dir / f"stage{stage}.yaml"
    flags = read_yaml(path)
    prefix = flags.pop("prefix", None)
    if prefix not in PREFIX_FORMATS:
        raise CascadeError(
            f"{path}: `prefix` must be {' or '.join(PREFIX_FORMATS)} (what its records hold before "
            f"<DFF>), got {prefix!r}."
        )
    return prefix, flags


def run_name(dataset: str, model: str, stage: int, finetuning: bool) -> str:
    return f"{dataset}-{model}-stage{stage}" + ("-finetuning" if finetuning else "")


def stage_runs(config_dir: Path, stages: list[int], from_pretrained: str | None, each_from_start: bool) -> dict:
    """{run name: run_clm_diff flags} of the stages, in order, each with its output_dir and starting point."""
    cascade = load_cascade(config_dir)
    model = Path(from_pretrained).name if from_pretrained else cascade["model"]
    output_root = Path(cascade.get("output_root", "outputs"))
    runs = {}
    for stage in stages:
        prefix, own_flags = load_stage(config_dir, stage)
        flags = {
            "do_train": True,
            **(cascade.get("train") or {}),
            **own_flags,
            "output_dir": str(output_root / run_name(cascade["dataset"], model, stage, bool(from_pretrained))),
        }
        check_stage_data(config_dir / f"stage{stage}.yaml", prefix, flags)
        previous = output_root / run_name(cascade["dataset"], model, stage - 1, bool(from_pretrained))
        source = from_pretrained if stage == 1 or each_from_start else str(previous)
        if source is not None:  # from a checkpoint: its config and tokenizer replace the from-scratch flags
            flags = {
                **{key: value for key, value in flags.items() if key not in SCRATCH_FLAGS},
                "model_name_or_path": source,
            }
        runs[Path(flags["output_dir"]).name] = flags
    return runs


def check_stage_data(stage_file: Path, prefix: str, flags: dict) -> None:
    """A CascadeError when the first records of the stage's train_file do not have the stage's prefix format."""
    train_file = flags.get("train_file")
    if not train_file or not Path(train_file).is_file():
        raise CascadeError(
            f"{stage_file}: train_file {train_file} does not exist; build the stage files with "
            "data_scripts/make_cascade_data.py (and --merge) first."
        )
    column, dff = flags.get("text_column", "text"), flags.get("dff_token", "<DFF>")
    separator = flags.get("prefix_separator", "<SEP>")
    prefixes = []
    for number, record in enumerate(islice(read_jsonl(train_file), RECORDS_CHECKED), start=1):
        text = record.get(column)
        if not isinstance(text, str) or dff not in text:
            raise CascadeError(
                f"{train_file} record {number}: no {dff} in column {column!r}; cascade stage data "
                "comes from make_cascade_data.py."
            )
        prefixes.append((number, text.split(dff, 1)[0].strip()))
    for number, found in prefixes:
        if (prefix == "none") != (not found):
            held = f"the prefix {found[:40]!r}" if found else f"nothing before {dff}"
            raise CascadeError(
                f"{stage_file} says `prefix: {prefix}` but {train_file} record {number} has {held}: "
                "is train_file another stage's data? Point train_file at this stage's "
                "stage{N}.jsonl.zst or fix `prefix`."
            )
    if prefix == "keywords" and not any(separator in found for _, found in prefixes):
        raise CascadeError(
            f"{stage_file}: no prefix among the first {len(prefixes)} records of {train_file} holds "
            f"the separator {separator!r}; set prefix_separator to the data's separator "
            "(make_cascade_data.py --separator)."
        )


def check_starting_points(runs: dict, stages: list[int]) -> None:
    """A CascadeError when a stage starts from an earlier stage's run that neither exists nor is trained now."""
    planned = {flags["output_dir"] for flags in runs.values()}
    for flags in runs.values():
        source = flags.get("model_name_or_path")
        if source and source not in planned and not Path(source).is_dir():
            raise CascadeError(
                f"{flags['output_dir']} starts from {source}, which does not exist: train that stage "
                f"first (add it to --stages {' '.join(map(str, stages))}) or pass --from_pretrained."
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-train-cascade", description=__doc__.split("\n\n")[0])
    parser.add_argument("config_dir", help="directory with cascade.yaml and stage{N}.yaml (see configs/cascade)")
    parser.add_argument("--stages", type=int, nargs="+", required=True, help="stages to train, in this order")
    parser.add_argument(
        "--from_pretrained", metavar="CKPT", help="start stage 1 from this checkpoint (runs named ...-finetuning)"
    )
    parser.add_argument(
        "--each_from_start",
        action="store_true",
        help="every stage starts from scratch / --from_pretrained instead of the previous stage",
    )
    parser.add_argument("--resume", action="store_true", help="continue interrupted stages from their checkpoints")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if sorted(set(args.stages)) != args.stages or args.stages[0] < 1:
        parser.error(f"--stages must be increasing stage numbers from 1, got {' '.join(map(str, args.stages))}.")
    if args.from_pretrained and not Path(args.from_pretrained).is_dir():
        parser.error(f"--from_pretrained {args.from_pretrained}: no such checkpoint directory.")
    try:
        runs = stage_runs(Path(args.config_dir), args.stages, args.from_pretrained, args.each_from_start)
        check_starting_points(runs, args.stages)
        refuse_interrupted({name: Path(flags["output_dir"]) for name, flags in runs.items()}, args.resume)
        for name, flags in runs.items():
            source = flags.get("model_name_or_path", "scratch")
            train_unless_finished(name, flags, f"from {source}")
    except (RunError, OSError, yaml.YAMLError) as error:
        parser.error(str(error))
    print("Trained stages: " + " ".join(flags["output_dir"] for flags in runs.values()))


if __name__ == "__main__":
    main()
