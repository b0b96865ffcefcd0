"""The curves of the GRPO recipe (docs/grpo.png, shown in docs/grpo.md): the training reward of a run and the held-out
exact match of its checkpoints.

    python docs/grpo_curves.py --run outputs/arithmetic_grpo --evals outputs/arithmetic_grpo_eval --output docs/grpo.png

--run is the output directory of run_diffusion_grpo.py (its trainer_state.json, or its last checkpoint's, holds the
logged `rewards/<name>/mean`); --evals holds one `step-N.jsonl` per evaluated step, written by
`diff-eval-arithmetic --output` (a record per problem with its `correct` flag). Needs matplotlib (`.[bench]`).
"""

import argparse
import glob
import json
import os
import re


def logged_rewards(run: str, name: str) -> list[tuple[int, float]]:
    """(step, mean reward `name`) of every logging step of the run."""
    states = [os.path.join(run, "trainer_state.json")] + sorted(
        glob.glob(os.path.join(run, "checkpoint-*", "trainer_state.json")),
        key=lambda path: int(re.search(r"checkpoint-(\d+)", path).group(1)),
    )
    path = next((state for state in states if os.path.isfile(state)), None)
    if path is None:
        raise SystemExit(f"{run}: no trainer_state.json; pass the --output_dir of run_diffusion_grpo.py.")
    with open(path, encoding="utf-8") as handle:
        history = json.load(handle)["log_history"]
    key = f"rewards/{name}/mean"
    return [(entry["step"], entry[key]) for entry in history if key in entry]


def held_out_accuracy(evals: str) -> list[tuple[int, float]]:
    """(step, exact match) of every `step-N.jsonl` in `evals`."""
    points = []
    for path in glob.glob(os.path.join(evals, "step-*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            correct = [json.loads(line)["correct"] for line in handle if line.strip()]
        points.append((int(re.search(r"step-(\d+)\.jsonl$", path).group(1)), sum(correct) / len(correct)))
    if not points:
        raise SystemExit(f"{evals}: no step-N.jsonl files; write them with diff-eval-arithmetic --output.")
    return sorted(points)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--evals", required=True)
    parser.add_argument("--reward", default="arithmetic", help="the reward function whose mean is drawn")
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards, accuracy = logged_rewards(args.run, args.reward), held_out_accuracy(args.evals)
    figure, axis = plt.subplots(figsize=(7, 4.2))
    axis.plot(*zip(*rewards), label=f"training reward ({args.reward}, sampled at temperature 1)", alpha=0.7)
    axis.plot(*zip(*accuracy), marker="o", label="held-out exact match (greedy)")
    axis.set_xlabel("GRPO step")
    axis.set_ylabel("share of answers right")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(args.output, dpi=100)
    print(
        f"Wrote {args.output}: held-out exact match {accuracy[0][1]:.3f} at step {accuracy[0][0]}, "
        f"{accuracy[-1][1]:.3f} at step {accuracy[-1][0]}"
    )


if __name__ == "__main__":
    main()
