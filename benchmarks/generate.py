#!/usr/bin/env python
"""Generation cost and quality of the samplers on a small arithmetic model: NFE, tokens/s, exact match.

    python benchmarks/generate.py [--max_samples 1000] [--batch_size 1] [--threads 1]
    python benchmarks/generate.py --model DIFFUSION_DIR --causal_model CAUSAL_DIR --test_file test.jsonl

Without --model the script makes 2-digit + and - problems (data_scripts/make_arithmetic.py) and trains a diffusion
model and a causal model of the same size with run_clm_diff.py and benchmarks/arithmetic.yaml (the causal one with
`--train_diff_model false --padding_side left`), in outputs/bench_arith/; a re-run reuses what is there.

Every row is a diff-eval-arithmetic run (its flags are in the table) on the same test prompts, greedy: one token per
step, Fast-dLLM threshold decoding, semi-autoregressive blocks, and the causal model's `model.generate` with its KV
cache. NFE is the number of forward passes per sample (exact per sample at --batch_size 1, otherwise those of its
batch); tokens/s counts completion tokens up to and including the first EOS per second of generation. The issue's
target: threshold decoding needs >= 4x fewer NFE than one token per step at <= 1 point of accuracy lost.
"""

import argparse
import os
import subprocess
import sys
import time

from common import REPO_ROOT, machine_summary, markdown_table  # also puts the repository on sys.path

BENCH_DIR = os.path.join("outputs", "bench_arith")
DATA_DIR = os.path.join(BENCH_DIR, "data")
CONFIG = os.path.join("benchmarks", "arithmetic.yaml")
DIFFUSION_DIR = os.path.join(BENCH_DIR, "diffusion")
CAUSAL_DIR = os.path.join(BENCH_DIR, "causal")
CAUSAL_FLAGS = ["--train_diff_model", "false", "--padding_side", "left", "--output_dir", CAUSAL_DIR]
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


def prepare_models(threads: int | None) -> dict[str, float]:
    """Make the data and train both models unless they exist; return the seconds each step took."""
    from data_scripts.make_arithmetic import make_arithmetic

    seconds = {}
    if not os.path.isfile(os.path.join(REPO_ROOT, DATA_DIR, "test.jsonl")):
        make_arithmetic(os.path.join(REPO_ROOT, DATA_DIR), **DATA)
    for name, directory, flags in (("diffusion", DIFFUSION_DIR, []), ("causal", CAUSAL_DIR, CAUSAL_FLAGS)):
        if os.path.isfile(os.path.join(REPO_ROOT, directory, "model.safetensors")):
            continue
        print(f"training the {name} model into {directory} ...", flush=True)
        environment = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        start = time.perf_counter()
        subprocess.run([sys.executable, "run_clm_diff.py", CONFIG, *flags], cwd=REPO_ROOT, env=environment,
                       check=True)
        seconds[f"training the {name} model"] = time.perf_counter() - start
    return seconds


def run_rows(models: dict[str, str], test_file: str, max_samples: int | None, batch_size: int) -> list[dict]:
    """Evaluate every row of ROWS; the first batch of each row is run once before timing (warm-up)."""
    from diff_trainer.cli import eval_arithmetic as evaluation
    from diff_trainer.cli.generate import open_checkpoint

    loaded = {name: open_checkpoint(path) for name, path in models.items()}
    results = []
    for name, which, flags in ROWS:
        model, tokenizer, diffusion_config = loaded[which]
        argv = ["--model", models[which], "--test_file", test_file, "--gen_length", str(GEN_LENGTH),
                "--batch_size", str(batch_size), *flags]
        args = evaluation.build_parser().parse_args(argv)
        dff_token = (diffusion_config or {}).get("dff_token") or evaluation.DEFAULT_DFF_TOKEN
        problems = evaluation.read_problems(test_file, dff_token)[:max_samples]
        prompt_ids = evaluation.prepare_prompts(args, tokenizer, diffusion_config, [p.prompt for p in problems])
        config = evaluation.sampler_config(args, diffusion_config, tokenizer) if diffusion_config else None
        evaluation.evaluate_problems(model, tokenizer, problems[:batch_size], prompt_ids[:batch_size], args, config)
        result = evaluation.evaluate_problems(model, tokenizer, problems, prompt_ids, args, config)
        print(f"{name}: {result.summary()}".replace("\n", "; "), flush=True)
        results.append({"name": name, "flags": " ".join(flags) or "(none)", "result": result})
    return results


def report(results: list[dict]) -> str:
    """The markdown table and whether threshold decoding meets the issue's target."""
    baseline = next(row["result"] for row in results if row["name"] == BASELINE)
    rows = []
    for row in results:
        result = row["result"]
        rows.append([row["name"], f"`{row['flags']}`", f"{result.nfe_per_sample:.2f}",
                     f"{baseline.nfe_per_sample / result.nfe_per_sample:.1f}x", f"{result.tokens_per_second:.0f}",
                     f"{100 * result.accuracy:.1f}", f"{100 * (result.accuracy - baseline.accuracy):+.1f}"])
    headers = ["sampler", "flags", "NFE / sample", "fewer NFE than one per step", "tokens/s", "exact match %",
               "vs one per step (points)"]
    lines = [markdown_table(headers, rows), ""]
    for row in results:
        if row["name"] in THRESHOLD_ROWS:
            result = row["result"]
            ratio = baseline.nfe_per_sample / result.nfe_per_sample
            loss = 100 * (baseline.accuracy - result.accuracy)
            met = "met" if ratio >= 4 and loss <= 1 else "NOT met"
            lines.append(f"- {row['name']}: {ratio:.1f}x fewer NFE, {loss:+.1f} points of accuracy lost: "
                         f"target (>= 4x, <= 1 point) {met}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusion checkpoint (default: train one into outputs/bench_arith/)")
    parser.add_argument("--causal_model", help="a causal checkpoint of the same size (needed with --model)")
    parser.add_argument("--test_file", help="prompt/answer JSON lines (default: the generated test split)")
    parser.add_argument("--max_samples", type=int, default=None, help="evaluate the first N test problems")
    parser.add_argument("--batch_size", type=int, default=1, help="prompts generated together (1: exact NFE)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training and generation")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.causal_model is None):
        parser.error("--model and --causal_model go together (or leave both out to train them).")
    if args.model is not None and args.test_file is None:
        parser.error("--test_file is needed with --model.")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    seconds = {}
    if args.model is None:
        seconds.update(prepare_models(args.threads))
        models = {"diffusion": os.path.join(REPO_ROOT, DIFFUSION_DIR), "causal": os.path.join(REPO_ROOT, CAUSAL_DIR)}
        test_file = args.test_file or os.path.join(REPO_ROOT, DATA_DIR, "test.jsonl")
    else:
        models, test_file = {"diffusion": args.model, "causal": args.causal_model}, args.test_file
    evaluation_start = time.perf_counter()
    results = run_rows(models, test_file, args.max_samples, args.batch_size)
    seconds["evaluating every row"] = time.perf_counter() - evaluation_start
    seconds["in total"] = time.perf_counter() - start

    problems = len(results[0]["result"].records)
    print(f"\n## Samplers on 2-digit + and - ({problems} test problems, gen_length {GEN_LENGTH}, greedy, "
          f"batch size {args.batch_size})\n")
    print(report(results))
    print(f"\nModels: {models['diffusion']}, {models['causal']}. Machine: {machine_summary()}.")
    print("Time: " + ", ".join(f"{what} {value / 60:.1f} min" for what, value in seconds.items()) + ".")


if __name__ == "__main__":
    main()
