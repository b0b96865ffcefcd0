#!/usr/bin/env python
"""Held-out ELBO with and without --isolate_documents, at equal training steps on the bundled corpus.

    python benchmarks/isolation.py [--steps 300] [--eval_mc_samples 16] [--threads 2]
    python benchmarks/isolation.py --quick      # 60 steps each, ELBO with 2 masks per row

Two runs of `run_clm_diff.py configs/demo.yaml` (packed rows of the stdlib docstrings, ~115 bytes per document, so
a 256-byte row holds two or three) differ only in --isolate_documents. Each trained model is then evaluated on the
validation rows both ways: with isolation (every document scored as if alone, which is how a prompt is seen when
sampling) and without (each token also sees the row's other documents). The ELBO uses the same seeded masks for all
four evaluations. The table also goes to benchmarks/results/isolation[_quick].md.
"""

import argparse
import json
import os
import sys
import tempfile

from common import DEMO_DIFFUSION_CONFIG, machine_summary, markdown_table, results_file, run_logged

MODES = {"isolated": "true", "shared": "false"}


def run(arguments: list[str], log_path: str, threads: int) -> dict:
    """run_clm_diff.py on configs/demo.yaml plus `arguments`; its all_results.json."""
    output_dir = arguments[arguments.index("--output_dir") + 1]
    command = [
        sys.executable,
        "run_clm_diff.py",
        DEMO_DIFFUSION_CONFIG,
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--disable_tqdm",
        "true",
        *arguments,
    ]
    run_logged(command, log_path, threads, f"run_clm_diff.py {' '.join(arguments)}")
    with open(os.path.join(output_dir, "all_results.json")) as handle:
        return json.load(handle)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="Training steps of each run (the demo recipe's 300).")
    parser.add_argument("--eval_mc_samples", type=int, default=16, help="Monte-Carlo masks of the ELBO bound.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="--steps 60 --eval_mc_samples 2")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_mc_samples = 60, 2
    return args


def main():
    args = parse_args()
    with results_file("isolation", args.quick), tempfile.TemporaryDirectory(prefix="bench_isolation_") as work:
        print(
            f"configs/demo.yaml, {args.steps} steps per run, ELBO with {args.eval_mc_samples} masks per row; "
            f"{machine_summary(args.threads)}.\n",
            flush=True,
        )
        rows = []
        for trained, trained_flag in MODES.items():
            model_dir = os.path.join(work, trained)
            results = run(
                [
                    "--output_dir",
                    model_dir,
                    "--max_steps",
                    str(args.steps),
                    "--do_eval",
                    "false",
                    "--isolate_documents",
                    trained_flag,
                ],
                os.path.join(work, f"{trained}.log"),
                args.threads,
            )
            print(
                f"trained {trained}: train_loss {results['train_loss']:.4f}, {results['train_runtime']:.0f} s",
                flush=True,
            )
            scores = {}
            for evaluated, evaluated_flag in MODES.items():
                metrics = run(
                    [
                        "--output_dir",
                        os.path.join(work, f"{trained}_eval_{evaluated}"),
                        "--do_train",
                        "false",
                        "--model_name_or_path",
                        model_dir,
                        "--config_overrides",
                        "",
                        "--isolate_documents",
                        evaluated_flag,
                        "--eval_mc_samples",
                        str(args.eval_mc_samples),
                    ],
                    os.path.join(work, f"{trained}_eval_{evaluated}.log"),
                    args.threads,
                )
                scores[evaluated] = metrics["eval_elbo_nll"]
            rows.append([f"trained {trained}", results["train_loss"], scores["isolated"], scores["shared"]])
        print("\nHeld-out ELBO bound, nats per byte (lower is better):\n")
        print(markdown_table(["model", "final train loss", "ELBO, isolated documents", "ELBO, shared rows"], rows))


if __name__ == "__main__":
    main()
