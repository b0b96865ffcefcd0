#!/usr/bin/env python
"""Learning check (not a test): one net trained as a causal LM, masked diffusion, SEDD absorbing and SEDD uniform.

    python benchmarks/quality.py [--steps 200] [--evals 4] [--plot benchmarks/results/quality.png]
    python benchmarks/quality.py --quick     # 12 steps each, 2 evaluations; plot benchmarks/results/quality_quick.png

Every objective runs `run_clm_diff.py` on the demo configs (configs/demo_clm.yaml for the causal LM,
configs/demo.yaml otherwise: the same Llama, data, batch, learning rate and cosine schedule) for the same number of
steps, i.e. the same tokens; only `--diffusion_objective` differs among the diffusion runs. `sedd_absorb` reads the
time-blind Llama's softmax as a score (RADD), `sedd_uniform` adds the noise-level embedding (TimeConditionedLM, a
small MLP on top of the same Llama). All evaluate on the same held-out rows every steps/evals steps and at the
start. Held-out perplexity per byte: the causal LM's exp(eval_loss); for the diffusion objectives
eval_elbo_perplexity, exp of a Monte-Carlo upper bound on the negative log-likelihood (the masked ELBO, SEDD's DWDSE
bound), so a diffusion number is an upper bound on its true perplexity. The table reports the training minutes each
run took (train_runtime minus its evaluations), as the machine is shared. The tables also go to
benchmarks/results/quality[_quick].md.
"""

import argparse
import json
import math
import os
import sys
import tempfile

from common import (
    DEMO_CLM_CONFIG,
    DEMO_DIFFUSION_CONFIG,
    REPO_ROOT,
    load_average,
    machine_summary,
    markdown_table,
    quiet,
    read_config,
    results_file,
    run_logged,
)

DEMO = read_config(DEMO_DIFFUSION_CONFIG)  # demo_clm.yaml has the same model, data and batch
BATCH_SIZE = DEMO["per_device_train_batch_size"]
# (label, config, extra run_clm_diff flags, metric key in the logs)
OBJECTIVES = (
    ("causal LM", DEMO_CLM_CONFIG, [], "eval_loss"),
    ("masked diffusion", DEMO_DIFFUSION_CONFIG, [], "eval_elbo_perplexity"),
    ("SEDD absorbing", DEMO_DIFFUSION_CONFIG, ["--diffusion_objective", "sedd_absorb"], "eval_elbo_perplexity"),
    ("SEDD uniform", DEMO_DIFFUSION_CONFIG, ["--diffusion_objective", "sedd_uniform"], "eval_elbo_perplexity"),
)


def train(name: str, config: str, args, output_dir: str, extra: list[str]) -> dict:
    """Run run_clm_diff.py; return its trainer_state log history and final eval metrics."""
    eval_steps = max(1, args.steps // args.evals)
    command = [
        sys.executable,
        "run_clm_diff.py",
        config,
        "--output_dir",
        output_dir,
        "--max_steps",
        str(args.steps),
        "--block_size",
        str(args.block_size),
        "--max_eval_samples",
        str(args.max_eval_samples),
        "--eval_steps",
        str(eval_steps),
        "--logging_steps",
        str(eval_steps),
        "--eval_on_start",
        "true",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        *extra,
    ]
    if config == DEMO_DIFFUSION_CONFIG:
        command += ["--eval_mc_samples", str(args.eval_mc_samples)]
    log_path = os.path.join(os.path.dirname(output_dir), f"{os.path.basename(output_dir)}.log")
    print(f"{name}: {args.steps} steps, eval every {eval_steps}", flush=True)
    run_logged(command, log_path, args.threads, f"{name} run")
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        history = json.load(handle)["log_history"]
    with open(os.path.join(output_dir, "all_results.json")) as handle:
        results = json.load(handle)
    return {"history": history, "results": results}


def curve(history: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, perplexity) of every log entry holding `key` (a loss is exponentiated), first occurrence per step."""
    points = {}
    for entry in history:
        if key in entry and entry["step"] not in points:
            points[entry["step"]] = math.exp(entry[key]) if key.endswith("loss") else entry[key]
    return sorted(points.items())


def plot(curves: dict, steps: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        axis.plot(*zip(*points), marker="o", label=label)
    axis.set_yscale("log")
    axis.set_xlabel(f"training steps ({BATCH_SIZE} rows each; budget {steps})")
    axis.set_ylabel("held-out perplexity per byte (diffusion: ELBO bound)")
    axis.set_title("One Llama, four objectives, the same steps")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="Training steps per objective (the same for all).")
    parser.add_argument("--evals", type=int, default=4, help="Evaluations per run (plus one at the start).")
    parser.add_argument("--eval_mc_samples", type=int, default=4, help="Monte-Carlo samples of the ELBO bounds.")
    parser.add_argument("--max_eval_samples", type=int, default=32, help="Held-out rows evaluated.")
    parser.add_argument("--block_size", type=int, default=128, help="Tokens per row.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--plot", default="benchmarks/results/quality.png", help="PNG path (relative to the repository)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--steps 12 --evals 2 --max_eval_samples 8 --plot benchmarks/results/quality_quick.png",
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.evals, args.max_eval_samples = 12, 2, 8
        args.plot = "benchmarks/results/quality_quick.png"
    if args.steps < 1 or args.evals < 1:
        parser.error("--steps and --evals must be at least 1.")
    return args


def main():
    args = parse_args()
    args.plot = os.path.join(REPO_ROOT, args.plot)  # an absolute path stays as it is
    with results_file("quality", args.quick):
        measure(args)


def measure(args):
    quiet()
    print(machine_summary(args.threads), flush=True)
    rows, curves = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as workdir:
        for index, (label, config, extra, key) in enumerate(OBJECTIVES):
            run = train(label, config, args, os.path.join(workdir, f"run{index}"), extra)
            points = curve(run["history"], key)
            curves[f"{label}: {'exp(eval_loss)' if key == 'eval_loss' else 'ELBO bound'}"] = points
            results = run["results"]
            eval_seconds = sum(entry.get("eval_runtime", 0.0) for entry in run["history"])
            rows.append(
                [
                    label,
                    "exp(eval_loss)" if key == "eval_loss" else "eval_elbo_perplexity (bound)",
                    args.steps,
                    (results["train_runtime"] - eval_seconds) / 60,
                    eval_seconds / 60,
                    args.steps * BATCH_SIZE * args.block_size,
                    points[0][1],
                    points[-1][1],
                    min(v for _, v in points),
                ]
            )
    print()
    print(
        markdown_table(
            [
                "objective",
                "metric",
                "steps",
                "train min (evals excluded)",
                "eval min",
                "tokens seen",
                "ppl at start",
                "final ppl",
                "best ppl",
            ],
            rows,
        )
    )
    print(f"\nload average now {load_average()}.")
    plot(curves, args.steps, args.plot)
    print(f"Plot: {args.plot}")


if __name__ == "__main__":
    main()
