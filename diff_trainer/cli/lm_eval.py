"""`diff-lm-eval`: score a checkpoint on lm-evaluation-harness tasks (needs the `[eval]` extra).

A diffusion checkpoint runs as the `diffusion_lm` model (diff_trainer.eval.harness: ELBO log-likelihoods, diffusion
sampling); a plain causal checkpoint runs as the harness's own `hf` model, so both are scored by the same tasks.

    diff-lm-eval --model out --tasks arithmetic_exact_match,docstring_choice --include_path tasks/ --limit 50
    diff-lm-eval --model out --tasks docstring_perplexity --include_path tasks/ --model_args mc_num=32,steps=16 \\
        --output_path results.json
    diff-lm-eval --model outputs/chat_demo --tasks arithmetic_exact_match --include_path tasks/ --apply_chat_template

`--apply_chat_template`, `--system_instruction`, `--fewshot_as_multiturn` and `--num_fewshot` are lm-eval's flags:
with the first, each prompt is a conversation rendered with the checkpoint's chat template (docs/harness.md).
"""

from __future__ import annotations

import argparse
import json
import os

from diff_trainer.cli.generate import open_checkpoint
from diff_trainer.data.pipeline import bos_prefix
from diff_trainer.devices import DEVICE_CHOICES_HELP, DTYPE_CHOICES, checkpoint_dtype, resolve_device, resolve_dtype
from diff_trainer.eval.confidence import accuracy_intervals


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-lm-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (model, config and tokenizer)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--include_path", help="a directory of extra task YAML files (this project's: tasks/)")
    parser.add_argument(
        "--limit",
        type=float,
        default=None,
        help="at most this many documents per task (a fraction below 1: that share)",
    )
    parser.add_argument("--output_path", help="write the results (metrics and settings) to this JSON file")
    parser.add_argument(
        "--model_args",
        default="",
        help="k=v,... for diffusion_lm: mc_num (default 128), batch_size, seed, gen_length, steps, "
        "block_length, threshold, guidance_scale, remasking, temperature (masked diffusion), "
        "predictor (SEDD: euler or analytic)",
    )
    parser.add_argument(
        "--apply_chat_template",
        action="store_true",
        help="render each prompt as a conversation with the checkpoint's chat template (the one it was trained with)",
    )
    parser.add_argument(
        "--system_instruction", help="a system message before each prompt (plain text before it without a template)"
    )
    parser.add_argument(
        "--fewshot_as_multiturn",
        type=lambda text: text.lower() in ("true", "1", "yes"),
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="few-shot examples as earlier user/assistant turns (default with --apply_chat_template; 'false': "
        "all in one user turn)",
    )
    parser.add_argument("--num_fewshot", type=int, help="few-shot examples before each prompt (default: the task's)")
    parser.add_argument("--batch_size", type=int, default=8, help="requests per forward pass for a causal model")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="auto: the checkpoint's dtype on a GPU, float32 on the CPU",
    )
    return parser


def parse_model_args(text: str) -> dict[str, str]:
    """`k=v,k=v` as a dict (values stay strings; the model converts them)."""
    pairs = [item for item in text.split(",") if item.strip()]
    bad = [item for item in pairs if "=" not in item]
    if bad:
        raise ValueError(f"--model_args: {bad[0]!r} is not key=value.")
    return dict(item.strip().split("=", 1) for item in pairs)


def build_model(args, model_args: dict):
    """The harness model for the checkpoint: diffusion_lm, or the harness's `hf` model for a causal checkpoint."""
    from lm_eval.models.huggingface import HFLM  # the [eval] extra: imported when the command runs

    from diff_trainer.eval.harness import DiffusionLM  # registers diffusion_lm with lm_eval

    device = resolve_device(args.device)
    dtype = str(resolve_dtype(args.dtype, device, checkpoint_dtype(args.model))).removeprefix("torch.")
    model, tokenizer, diffusion_config = open_checkpoint(args.model, device=str(device), dtype=dtype)
    if diffusion_config is None:
        if model_args:
            raise ValueError(
                f"{args.model} is a causal checkpoint: --model_args ({', '.join(model_args)}) only "
                "apply to diffusion checkpoints."
            )
        # tokens as in training: special tokens only where bos_prefix puts a BOS (ByT5 would append an EOS)
        return HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=args.batch_size,
            device=str(device),
            add_bos_token=bool(bos_prefix(tokenizer)),
        )
    return DiffusionLM(model=model, tokenizer=tokenizer, **model_args)


def task_manager_for(tasks: list[str], include_path: str | None):
    """A TaskManager that knows `tasks`: only `include_path` when it holds them all (indexing the harness's
    thousands of built-in tasks takes a while), else the built-in tasks too. Unknown names raise ValueError."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or any(name not in manager.all_tasks for name in tasks):
        manager = TaskManager(include_path=include_path)
    unknown = [name for name in tasks if name not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"--tasks: unknown task(s) {', '.join(unknown)}"
            + ("" if include_path else " (this project's tasks need --include_path tasks/)")
        )
    return manager


def evaluate(argv: list[str] | None = None) -> dict:
    """Parse the flags, run the harness and write --output_path; the harness's results dict."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.utils import make_table
    except ImportError:
        parser.error("lm-evaluation-harness is not installed: pip install 'diff-trainer[eval]'.")
    if args.include_path and not os.path.isdir(args.include_path):
        parser.error(f"--include_path {args.include_path}: no such directory.")
    if args.output_path and not os.path.isdir(os.path.dirname(os.path.abspath(args.output_path))):
        parser.error(f"--output_path {args.output_path}: its directory does not exist; create it first.")
    if args.fewshot_as_multiturn and not args.apply_chat_template:
        parser.error("--fewshot_as_multiturn makes the examples turns of a chat: add --apply_chat_template.")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        parser.error(f"--num_fewshot {args.num_fewshot}: give 0 or more examples.")
    multiturn = args.apply_chat_template if args.fewshot_as_multiturn is None else args.fewshot_as_multiturn
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    try:
        task_manager = task_manager_for(tasks, args.include_path)
        lm = build_model(args, parse_model_args(args.model_args))
        if args.apply_chat_template:  # one message for both kinds of checkpoint
            from diff_trainer.eval.harness import checkpoint_chat_template

            checkpoint_chat_template(lm.tokenizer)
    except ValueError as error:
        parser.error(str(error))
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    try:
        results = simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=task_manager,
            limit=limit,
            num_fewshot=args.num_fewshot,
            system_instruction=args.system_instruction,
            apply_chat_template=args.apply_chat_template,
            fewshot_as_multiturn=multiturn,
            log_samples=False,
        )
    except FileNotFoundError as error:  # a task's local data file
        parser.error(
            f"{error}. The tasks in tasks/ read data/... relative to the working directory: run from the "
            "repository root (arithmetic data: python data_scripts/make_arithmetic.py "
            "--output_dir data/arithmetic)."
        )
    print(make_table(results))
    intervals = accuracy_intervals(results)
    for row in intervals:
        print(
            f"{row['task']} {row['metric']}: {row['right']}/{row['items']} = {row['share']:.3f}, 95% Wilson "
            f"interval [{row['low_95']:.3f}, {row['high_95']:.3f}] over the items"
        )
    if args.output_path:
        with open(args.output_path, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "model": args.model,
                    "model_args": args.model_args,
                    "limit": args.limit,
                    "apply_chat_template": args.apply_chat_template,
                    "system_instruction": args.system_instruction,
                    "num_fewshot": args.num_fewshot,
                    "fewshot_as_multiturn": multiturn,
                    "results": results["results"],
                    "intervals_95": intervals,
                    "configs": results["configs"],
                },
                handle,
                indent=2,
                default=str,
            )
    return results


def main(argv: list[str] | None = None) -> None:
    evaluate(argv)


if __name__ == "__main__":
    main()
