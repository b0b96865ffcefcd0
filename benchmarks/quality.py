#!/usr/bin/env python
"""Learning check (not a test): causal LM vs. masked diffusion trained for the same minutes on the bundled corpus.

    python benchmarks/quality.py [--minutes 3] [--evals 8] [--plot benchmarks/results/quality.png]
    python benchmarks/quality.py --quick     # 0.5 minutes each, 2 evaluations; plot benchmarks/results/quality_quick.png

Both run `run_clm_diff.py` with configs/demo_clm.yaml and configs/demo.yaml (same Llama, data, batch, learning
rate and cosine schedule). The time budget becomes a step budget: a short calibration alternates training steps
of both objectives in one process (benchmarks/train_step.py's timed steps) and each run gets
max_steps = minutes·60 / its seconds per step, so the cosine schedule ends with the budget. The table reports the
training time each run really took (its train_runtime minus its evaluations' eval_runtime) next to the calibrated
estimate, and the evaluation time separately. Both evaluate on the same held-out rows (the validation file, packed the same way) every max_steps/evals
steps and at the start: the AR perplexity is exp(eval_loss), the diffusion one the ELBO bound
eval_elbo_perplexity (an upper bound on its true perplexity). The tables also go to
benchmarks/results/quality[_quick].md.
"""

import argparse
import json
import math
import os
import sys
import tempfile
from types import SimpleNamespace

from common import (DEMO_CLM_CONFIG, DEMO_DIFFUSION_CONFIG, REPO_ROOT, load_average, machine_summary,
                    markdown_table, median, quiet, read_config, results_file, run_logged)

DEMO = read_config(DEMO_DIFFUSION_CONFIG)  # demo_clm.yaml has the same model, data and batch
BATCH_SIZE, BLOCK_SIZE = DEMO["per_device_train_batch_size"], DEMO["block_size"]


def calibrate(threads: int, steps: int) -> dict:
    """Seconds per training step of each objective, from steps run alternately in this process.

    The causal LM gets its median step time; diffusion gets that times the median ratio of adjacent steps, which
    changing load from other processes affects far less than two separate medians.
    """
    import torch
    from train_step import build_steps

    torch.set_num_threads(threads)
    quiet()
    with tempfile.TemporaryDirectory(prefix="bench_quality_calibration_") as output_dir:
        clm, diffusion = build_steps(SimpleNamespace(batch_size=BATCH_SIZE, block_size=BLOCK_SIZE), output_dir)
        for _ in range(2):  # warm-up
            clm.step()
            diffusion.step()
        clm_times, ratios = [], []
        for index in range(steps):
            order = (clm, diffusion) if index % 2 == 0 else (diffusion, clm)
            seconds = {timed: timed.step() for timed in order}
            clm_times.append(seconds[clm])
            ratios.append(seconds[diffusion] / seconds[clm])
    return {"clm": median(clm_times), "diffusion": median(clm_times) * median(ratios)}


def train(name: str, config: str, max_steps: int, evals: int, output_dir: str, extra: list[str], threads: int) -> dict:
    """Run run_clm_diff.py; return its trainer_state log history and final eval metrics."""
    eval_steps = max(1, max_steps // evals)
    command = [sys.executable, "run_clm_diff.py", config, "--output_dir", output_dir, "--max_steps", str(max_steps),
               "--eval_steps", str(eval_steps), "--logging_steps", str(eval_steps), "--eval_on_start", "true",
               "--save_strategy", "no", "--disable_tqdm", "true", *extra]
    log_path = os.path.join(os.path.dirname(output_dir), f"{name}.log")
    print(f"{name}: {max_steps} steps, eval every {eval_steps}", flush=True)
    run_logged(command, log_path, threads, f"{name} run")
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        history = json.load(handle)["log_history"]
    with open(os.path.join(output_dir, "all_results.json")) as handle:
        results = json.load(handle)
    return {"history": history, "results": results}


def curve(history: list[dict], key: str, transform=lambda v: v) -> list[tuple[int, float]]:
    """(step, value) of every log entry holding `key`, first occurrence per step."""
    points = {}
    for entry in history:
        if key in entry and entry["step"] not in points:
            points[entry["step"]] = transform(entry[key])
    return sorted(points.items())


def plot(curves: dict, seconds_per_step: dict, minutes: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, (name, points) in curves.items():
        steps, values = zip(*points)
        axis.plot([s * seconds_per_step[name] / 60 for s in steps], values, marker="o", label=label)
    axis.set_yscale("log")
    axis.set_xlabel(f"training minutes (calibrated; budget {minutes:g} each)")
    axis.set_ylabel("perplexity per byte on held-out tokens")
    axis.set_title("Causal LM vs. masked diffusion, same model, data and minutes")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="Training minutes per objective.")
    parser.add_argument("--evals", type=int, default=8, help="Evaluations per run (plus one at the start).")
    parser.add_argument("--eval_mc_samples", type=int, default=8, help="Monte-Carlo masks of the ELBO bound.")
    parser.add_argument("--calibration_steps", type=int, default=12, help="Timed steps per objective.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", default="benchmarks/results/quality.png", help="PNG path (relative to the repository).")
    parser.add_argument("--quick", action="store_true",
                        help="--minutes 0.5 --evals 2 --calibration_steps 4 --plot benchmarks/results/quality_quick.png")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.evals, args.calibration_steps = 0.5, 2, 4
        args.plot = "benchmarks/results/quality_quick.png"
    return args


def main():
    args = parse_args()
    args.plot = os.path.join(REPO_ROOT, args.plot)  # an absolute path stays as it is
    with results_file("quality", args.quick):
        measure(args)


def measure(args):
    seconds_per_step = calibrate(args.threads, args.calibration_steps)
    budget = args.minutes * 60
    max_steps = {name: max(1, round(budget / seconds)) for name, seconds in seconds_per_step.items()}
    print(f"{machine_summary(args.threads)}\nCalibration: {seconds_per_step['clm']:.3f} s/step causal LM, "
          f"{seconds_per_step['diffusion']:.3f} s/step diffusion -> {args.minutes:g} min = {max_steps['clm']} "
          f"and {max_steps['diffusion']} steps.", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_quality_") as workdir:
        clm = train("clm", DEMO_CLM_CONFIG, max_steps["clm"], args.evals, os.path.join(workdir, "clm"), [],
                    args.threads)
        diffusion = train("diffusion", DEMO_DIFFUSION_CONFIG, max_steps["diffusion"], args.evals,
                          os.path.join(workdir, "diffusion"), ["--eval_mc_samples", str(args.eval_mc_samples)],
                          args.threads)

    clm_curve = curve(clm["history"], "eval_loss", math.exp)
    diffusion_curve = curve(diffusion["history"], "eval_elbo_perplexity")
    rows = []
    for label, run, name, points, final in (
        ("causal LM", clm, "clm", clm_curve, clm["results"]["perplexity"]),
        ("masked diffusion", diffusion, "diffusion", diffusion_curve, diffusion["results"]["eval_elbo_perplexity"]),
    ):
        results = run["results"]
        eval_seconds = sum(entry.get("eval_runtime", 0.0) for entry in run["history"])
        rows.append([label, "exp(eval_loss)" if name == "clm" else "eval_elbo_perplexity (bound)", max_steps[name],
                     (results["train_runtime"] - eval_seconds) / 60, max_steps[name] * seconds_per_step[name] / 60,
                     eval_seconds / 60, max_steps[name] * BATCH_SIZE * BLOCK_SIZE, points[0][1], final,
                     min(v for _, v in points)])
    print()
    print(markdown_table(["objective", "metric", "steps", "train min (measured, evals excluded)",
                          "train min (calibrated)", "eval min", "tokens seen", "ppl at start", "final ppl",
                          "best ppl"], rows))
    print(f"\ndiffusion ELBO bound / AR perplexity at the end: {rows[1][8] / rows[0][8]:.2f}×; "
          f"load average now {load_average()}.")
    plot({"causal LM: exp(eval_loss)": ("clm", clm_curve),
          "masked diffusion: ELBO perplexity bound": ("diffusion", diffusion_curve)},
         seconds_per_step, args.minutes, args.plot)
    print(f"Plot: {args.plot}")


if __name__ == "__main__":
    main()
