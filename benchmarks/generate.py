#!/usr/bin/env python
"""Generation cost and quality of the samplers on a small arithmetic model: NFE, tokens/s, exact match.

    python benchmarks/generate.py [--max_samples 1000] [--batch_size 1] [--threads 1]
    python benchmarks/generate.py --quick      # models trained 100 steps, 50 test problems
    python benchmarks/generate.py --model DIFFUSION_DIR --causal_model CAUSAL_DIR --test_file test.jsonl

Without --model the script makes 2-digit + and - problems (data_scripts/make_arithmetic.py) and trains a diffusion
model and a causal model of the same size with run_clm_diff.py and benchmarks/arithmetic.yaml (the causal one with
`--train_diff_model false --padding_side left`), in outputs/bench_arith/. A re-run reuses data and models only when
they were made with the same settings from inputs with the same contents (common.cached_build), and says so.

Every row is a diff-eval-arithmetic run (its flags are in the table) on the same test prompts, greedy: one token per
step, Fast-dLLM threshold decoding, semi-autoregressive blocks, and the causal model's `model.generate` with its KV
cache. The rows are interleaved: the problems are cut into chunks and every row runs on each chunk in turn (the order
rotating), so changing machine load hits all rows alike. NFE is the number of forward passes per sample (exact per
sample at --batch_size 1, otherwise those of its batch); tokens/s counts completion tokens up to and including the
first EOS per second of generation. NFE ratios compare samplers of the same diffusion model; the causal model is a
different model, so it gets no ratio. The issue's target: threshold decoding needs >= 4x fewer NFE than one token
per step at <= 1 point of accuracy lost. The tables also go to benchmarks/results/generate[_quick].md.
"""

import argparse
import os
import time

from common import (  # puts the repo on sys.path
    REPO_ROOT,
    cached_build,
    machine_summary,
    markdown_table,
    results_file,
    train_twins,
)

BENCH_DIR = os.path.join("outputs", "bench_arith")
CONFIG = os.path.join("benchmarks", "arithmetic.yaml")
CAUSAL_FLAGS = ["--train_diff_model", "false", "--padding_side", "left"]
QUICK = {"max_steps": 100, "max_samples": 50}
CHUNK = 25  # problems per interleaving round
DATA = {"num_train": 10000, "num_test": 1000, "max_operand": 99, "operators": "+-", "seed": 0}
GEN_LENGTH = 8  # the longest prompt (7 bytes, "99-99=<DFF>") + 8 fits the 16-byte training rows

BASELINE = "one token per step"
THRESHOLD_ROWS = ("threshold 0.9", "threshold 0.7")
ROWS = [  # (name, which model, diff-eval-arithmetic flags)
    (BASELINE, "diffusion", ["--steps", str(GEN_LENGTH)]),
    ("threshold 0.9", "diffusion", ["--threshold", "0.9"]),
    ("threshold 0.7", "diffusion", ["--threshold", "0.7"]),
    ("semi-AR blocks of 4, one token per step", "diffusion", ["--block_length", "4", "--steps", str(GEN_LENGTH)]),
    ("semi-AR blocks of 4, threshold 0.9", "diffusion", ["--block_length", "4", "--threshold", "0.9"]),
    ("causal model.generate (KV cache)", "causal", []),
]


ROWS_MODEL = {name: which for name, which, _ in ROWS}


def prepare_models(threads: int | None, max_steps: int | None) -> tuple[dict[str, str], str, dict[str, float]]:
    """The data and both models (reused when their settings and inputs match); returns (models, test file, seconds)."""
    from data_scripts.make_arithmetic import make_arithmetic

    seconds = {}
    bench_dir = os.path.join(REPO_ROOT, BENCH_DIR + ("_quick" if max_steps else ""))
    data_dir = cached_build(
        os.path.join(bench_dir, "data"), DATA, [], lambda out: make_arithmetic(out, **DATA), "arithmetic problems"
    )
    models = train_twins(bench_dir, CONFIG, data_dir, CAUSAL_FLAGS, threads, max_steps, seconds)
    return models, os.path.join(data_dir, "test.jsonl"), seconds


def run_rows(models: dict[str, str], test_file: str, max_samples: int | None, batch_size: int) -> list[dict]:
    """Evaluate every row of ROWS; the first batch of each row is run once before timing (warm-up)."""
    from diff_trainer.cli import eval_arithmetic as evaluation
    from diff_trainer.cli.generate import open_checkpoint, sampler_flags
    from diff_trainer.sampling.settings import sampler_for

    loaded = {name: open_checkpoint(path) for name, path in models.items()}
    prepared = []
    for _name, which, flags in ROWS:
        model, tokenizer, diffusion_config = loaded[which]
        argv = [
            "--model",
            models[which],
            "--test_file",
            test_file,
            "--gen_length",
            str(GEN_LENGTH),
            "--batch_size",
            str(batch_size),
            *flags,
        ]
        args = evaluation.build_parser().parse_args(argv)
        dff_token = (diffusion_config or {}).get("dff_token") or evaluation.DEFAULT_DFF_TOKEN
        problems = evaluation.read_problems(test_file, dff_token)[:max_samples]
        prompt_ids = evaluation.prepare_prompts(args, tokenizer, diffusion_config, [p.prompt for p in problems])
        config = sampler_for(diffusion_config, tokenizer, **sampler_flags(args)) if diffusion_config else None
        evaluation.evaluate_problems(model, tokenizer, problems[:batch_size], prompt_ids[:batch_size], args, config)
        prepared.append((model, tokenizer, problems, prompt_ids, args, config))
    parts = [[] for _ in ROWS]
    chunk = max(CHUNK, batch_size)
    for round_index, start in enumerate(range(0, len(prepared[0][2]), chunk)):
        order = list(range(len(ROWS)))
        order = order[round_index % len(order) :] + order[: round_index % len(order)]
        for index in order:
            model, tokenizer, problems, prompt_ids, args, config = prepared[index]
            part = slice(start, start + chunk)
            parts[index].append(
                evaluation.evaluate_problems(model, tokenizer, problems[part], prompt_ids[part], args, config)
            )
    results = []
    for (name, _, flags), pieces in zip(ROWS, parts):
        records = [record for piece in pieces for record in piece.records]
        result = evaluation.Evaluation(
            records=records,
            accuracy=sum(r["correct"] for r in records) / len(records),
            nfe_per_sample=sum(r["nfe"] for r in records) / len(records),
            completion_tokens=sum(piece.completion_tokens for piece in pieces),
            seconds=sum(piece.seconds for piece in pieces),
        )
        print(f"{name}: {result.summary()}".replace("\n", "; "), flush=True)
        results.append(
            {"name": name, "flags": " ".join(flags) or "(none)", "result": result, "model": ROWS_MODEL[name]}
        )
    return results


def report(results: list[dict]) -> str:
    """The markdown table and whether threshold decoding meets the issue's target."""
    baseline = next(row["result"] for row in results if row["name"] == BASELINE)
    rows = []
    for row in results:
        result = row["result"]
        ratio = (
            f"{baseline.nfe_per_sample / result.nfe_per_sample:.1f}x"
            if row["model"] == "diffusion"
            else "n/a (other model)"
        )
        rows.append(
            [
                row["name"],
                f"`{row['flags']}`",
                f"{result.nfe_per_sample:.2f}",
                ratio,
                f"{result.tokens_per_second:.0f}",
                f"{100 * result.accuracy:.1f}",
                f"{100 * (result.accuracy - baseline.accuracy):+.1f}",
            ]
        )
    headers = [
        "sampler",
        "flags",
        "NFE / sample",
        "fewer NFE than one per step",
        "tokens/s",
        "exact match %",
        "vs one per step (points)",
    ]
    lines = [markdown_table(headers, rows), ""]
    for row in results:
        if row["name"] in THRESHOLD_ROWS:
            result = row["result"]
            ratio = baseline.nfe_per_sample / result.nfe_per_sample
            loss = 100 * (baseline.accuracy - result.accuracy)
            met = "met" if ratio >= 4 and loss <= 1 else "NOT met"
            lines.append(
                f"- {row['name']}: {ratio:.1f}x fewer NFE, {loss:+.1f} points of accuracy lost: "
                f"target (>= 4x, <= 1 point) {met}"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusion checkpoint (default: train one into outputs/bench_arith/)")
    parser.add_argument("--causal_model", help="a causal checkpoint of the same size (needed with --model)")
    parser.add_argument("--test_file", help="prompt/answer JSON lines (default: the generated test split)")
    parser.add_argument("--max_samples", type=int, default=None, help="evaluate the first N test problems")
    parser.add_argument("--batch_size", type=int, default=1, help="prompts generated together (1: exact NFE)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training and generation")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"train {QUICK['max_steps']} steps (into outputs/bench_arith_quick/), "
        f"--max_samples {QUICK['max_samples']}",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.max_samples = args.max_samples or QUICK["max_samples"]
    if (args.model is None) != (args.causal_model is None):
        parser.error("--model and --causal_model go together (or leave both out to train them).")
    if args.model is not None and args.test_file is None:
        parser.error("--test_file is needed with --model.")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with results_file("generate", args.quick):
        measure(args)


def measure(args):
    start = time.perf_counter()
    seconds = {}
    if args.model is None:
        models, default_test, trained = prepare_models(args.threads, QUICK["max_steps"] if args.quick else None)
        seconds.update(trained)
        test_file = args.test_file or default_test
    else:
        models, test_file = {"diffusion": args.model, "causal": args.causal_model}, args.test_file
    evaluation_start = time.perf_counter()
    results = run_rows(models, test_file, args.max_samples, args.batch_size)
    seconds["evaluating every row"] = time.perf_counter() - evaluation_start
    seconds["in total"] = time.perf_counter() - start

    problems = len(results[0]["result"].records)
    print(
        f"\n## Samplers on 2-digit + and - ({problems} test problems, gen_length {GEN_LENGTH}, greedy, "
        f"batch size {args.batch_size})\n"
    )
    print(report(results))
    print(f"\nModels: {models['diffusion']}, {models['causal']}. Machine: {machine_summary()}.")
    print("Time: " + ", ".join(f"{what} {value / 60:.1f} min" for what, value in seconds.items()) + ".")


if __name__ == "__main__":
    main()
