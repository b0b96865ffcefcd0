#!/usr/bin/env python
"""Demo (not a test): VRPO on small arithmetic. Exact match before/after DPO, and the reward-accuracy curve.

    python benchmarks/dpo_arithmetic.py [--sft_model DIR] [--pairs on_policy synthetic] [--dpo_steps 200]
    python benchmarks/dpo_arithmetic.py --quick    # SFT 300 steps, DPO 20 steps, 50 problems; outputs/bench_dpo_quick/

Steps, in outputs/bench_dpo/ (a re-run reuses the data, SFT model, on-policy pairs and DPO policies only when they
were made with the same settings from inputs with the same contents, see common.cached_build, and says so):
1. data: make_arithmetic.py problems `a+b=` / `a-b=` with 0 <= a, b <= 19 (train 600 / test 200) and a pair per
   train problem (chosen: the answer; rejected: a plausible slip: off by one or ten, digits swapped, ...);
2. SFT: without --sft_model, a 4-layer Llama (hidden 128) is trained as a masked-diffusion model with
   run_clm_diff.py (LLaDA SFT: rows of 16 tokens, the answer then trained EOS filling the row);
3. pairs: "synthetic" are make_arithmetic's; "on_policy" take as rejected the SFT model's own wrong answer on the
   train prompt (greedy, then 4 samples at temperature 1; make_arithmetic's slip if it never errs);
4. DPO: run_diffusion_dpo.py configs/dpo.yaml on each kind of train pairs (the same 16-token rows:
   --response_padding eos, --prompt_suffix <DFF>), reward metrics on the held-out test pairs every --eval_every
   steps;
5. exact match of greedy one-token-per-step sampling (the diffusion sampler, scored as diff-eval-arithmetic does)
   on the held-out test problems and on the train problems, for the SFT model and each DPO model.
Training runs are subprocesses (logs in the output directory); torch uses --threads threads.
DPO uses configs/dpo.yaml with DPO_SETTINGS below on top (printed with the results). The tables also go to
benchmarks/results/dpo_arithmetic[_quick].md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from common import REPO_ROOT, cached_build, machine_summary, markdown_table, results_file  # puts the repo on sys.path

BENCH_DIR = os.path.join(REPO_ROOT, "outputs", "bench_dpo")
QUICK = {"bench_dir": BENCH_DIR + "_quick", "sft_steps": 300, "dpo_steps": 20, "eval_every": 10, "max_samples": 50}
DATA = {"num_train": 600, "num_test": 200, "max_operand": 19, "operators": "+-", "seed": 0}
BLOCK = 16  # the longest prompt "19-19=<DFF>" (7 bytes) + up to 3 answer bytes + EOS, EOS-filled to 16
GEN_LENGTH = BLOCK - 7
MODEL = (
    "hidden_size=128,intermediate_size=384,num_hidden_layers=4,num_attention_heads=4,num_key_value_heads=4,"
    "max_position_embeddings=64"
)


def environment(threads: int) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_script(argv: list[str], log_path: str, threads: int) -> float:
    """Run a repository script as a subprocess, its output going to `log_path`; return its wall seconds."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(
            [sys.executable, *argv], cwd=REPO_ROOT, env=environment(threads), stdout=log, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        with open(log_path) as log:
            sys.exit(f"{argv[0]} failed (log: {log_path}):\n{log.read()[-3000:]}")
    return time.perf_counter() - start


def prepare_data(bench_dir: str = BENCH_DIR) -> str:
    """The arithmetic files with preference pairs."""
    from data_scripts.make_arithmetic import make_arithmetic

    return cached_build(
        os.path.join(bench_dir, "data"),
        {**DATA, "preferences": True},
        [],
        lambda out: make_arithmetic(out, preferences=True, **DATA),
        "arithmetic problems and pairs",
    )


def sft_flags(data_dir: str, steps: int) -> list[str]:
    return [
        "--train_file",
        os.path.join(data_dir, "train.jsonl"),
        "--train_diff_model",
        "--tokenizer_name",
        "byte",
        "--model_type",
        "llama",
        "--config_overrides",
        MODEL,
        "--block_size",
        str(BLOCK),
        "--padding_side",
        "right",
        "--validation_split_percentage",
        "0",
        "--do_train",
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        "32",
        "--learning_rate",
        "0.001",
        "--weight_decay",
        "0.01",
        "--lr_scheduler_type",
        "cosine",
        "--warmup_steps",
        "0.05",
        "--logging_steps",
        "100",
        "--save_strategy",
        "no",
        "--eval_mc_samples",
        "0",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]


def prepare_sft(data_dir: str, steps: int, threads: int, bench_dir: str = BENCH_DIR) -> tuple[str, float]:
    """A masked-diffusion SFT checkpoint trained on the arithmetic problems; (directory, training seconds or 0)."""
    seconds = [0.0]

    def train(output):
        seconds[0] = run_script(
            ["run_clm_diff.py", *sft_flags(data_dir, steps), "--output_dir", output],
            os.path.join(bench_dir, "sft.log"),
            threads,
        )

    flags = sft_flags("DATA", steps)  # the data enter the key by content, not by path
    output = cached_build(os.path.join(bench_dir, "sft"), {"flags": flags}, [data_dir], train, "the SFT model")
    return output, seconds[0]


def on_policy_pairs(sft_model: str, data_dir: str, samples: int, seed: int = 0) -> str:
    """Train pairs whose rejected answer is the SFT model's own mistake (written once per SFT model).

    Every train prompt is answered greedily and `samples` times at temperature 1; the first wrong answer becomes
    the rejected one. Prompts the model never gets wrong keep make_arithmetic.py's plausible slip.
    """
    directory = cached_build(
        os.path.join(os.path.dirname(data_dir), "on_policy_pairs"),
        {"samples": samples, "seed": seed, "gen_length": GEN_LENGTH},
        [sft_model, data_dir],
        lambda out: write_on_policy_pairs(sft_model, data_dir, samples, seed, out),
        "the on-policy pairs",
    )
    return os.path.join(directory, "train_pairs.jsonl")


def write_on_policy_pairs(sft_model: str, data_dir: str, samples: int, seed: int, directory: str) -> None:
    from diff_trainer.cli import eval_arithmetic as evaluation
    from diff_trainer.cli.generate import open_checkpoint, sampler_flags
    from diff_trainer.data.io import read_jsonl, write_jsonl
    from diff_trainer.sampling.settings import sampler_for

    path = os.path.join(directory, "train_pairs.jsonl")
    train_file = os.path.join(data_dir, "train.jsonl")
    model, tokenizer, diffusion_config = open_checkpoint(sft_model)
    problems = evaluation.read_problems(train_file, diffusion_config["dff_token"])
    candidates = [[] for _ in problems]
    for draw in range(samples + 1):
        flags = ["--temperature", "1.0", "--seed", str(seed + draw)] if draw else []
        args = evaluation.build_parser().parse_args(
            [
                "--model",
                sft_model,
                "--test_file",
                train_file,
                "--gen_length",
                str(GEN_LENGTH),
                "--batch_size",
                "100",
                *flags,
            ]
        )
        prompt_ids = evaluation.prepare_prompts(args, tokenizer, diffusion_config, [p.prompt for p in problems])
        config = sampler_for(diffusion_config, tokenizer, **sampler_flags(args))
        result = evaluation.evaluate_problems(model, tokenizer, problems, prompt_ids, args, config)
        for options, record in zip(candidates, result.records):
            options.append(record["completion"].strip())
    synthetic = list(read_jsonl(os.path.join(data_dir, "train_pairs.jsonl")))
    pairs = []
    for problem, options, fallback in zip(problems, candidates, synthetic):
        wrong = [answer for answer in options if answer and answer != problem.answer]
        pairs.append(
            {
                "prompt": problem.prompt,
                "chosen": problem.answer,
                "rejected": wrong[0] if wrong else fallback["rejected"],
            }
        )
    write_jsonl(pairs, path)


PAIR_KINDS = ("on_policy", "synthetic")
# On this tiny model LLaDA 1.5's sft_weight 0.05 lets the chosen answers' likelihood fall with the rejected ones
# (held-out exact match dropped); a full-weight SFT term and a smaller learning rate keep it up.
DPO_SETTINGS = ("--sft_weight", "1.0", "--learning_rate", "1e-4")


def dpo_flags(
    model: str, train_pairs: str, data_dir: str, output: str, steps: int, eval_every: int, *extra: str
) -> list[str]:
    return [
        "run_diffusion_dpo.py",
        "configs/dpo.yaml",
        "--model_name_or_path",
        model,
        "--train_file",
        train_pairs,
        "--validation_file",
        os.path.join(data_dir, "test_pairs.jsonl"),
        "--max_eval_samples",
        "200",
        "--max_length",
        str(BLOCK),
        "--max_prompt_length",
        "8",
        "--output_dir",
        output,
        "--max_steps",
        str(steps),
        "--eval_steps",
        str(eval_every),
        "--logging_steps",
        str(eval_every),
        "--save_strategy",
        "no",
        "--eval_on_start",
        "true",
        "--disable_tqdm",
        "true",
        *DPO_SETTINGS,
        *extra,
    ]


def train_dpo(
    sft_model: str,
    data_dir: str,
    kind: str,
    steps: int,
    eval_every: int,
    threads: int,
    extra=(),
    bench_dir: str = BENCH_DIR,
) -> tuple[str, list[str], float]:
    """Run run_diffusion_dpo.py on one kind of train pairs; return (output dir, its flags, wall seconds or 0)."""
    train_pairs = (
        on_policy_pairs(sft_model, data_dir, samples=4)
        if kind == "on_policy"
        else os.path.join(data_dir, "train_pairs.jsonl")
    )
    output = os.path.join(bench_dir, f"dpo_{kind}")
    flags = dpo_flags(sft_model, train_pairs, data_dir, output, steps, eval_every, *extra)
    seconds = [0.0]

    def train(_):
        seconds[0] = run_script(flags, os.path.join(bench_dir, f"dpo_{kind}.log"), threads)

    settings = {
        "kind": kind,
        "steps": steps,
        "eval_every": eval_every,
        "extra": list(extra),
        "settings": list(DPO_SETTINGS),
    }
    cached_build(
        output,
        settings,
        [sft_model, train_pairs, data_dir, os.path.join(REPO_ROOT, "configs", "dpo.yaml")],
        train,
        f"the DPO policy on {kind} pairs",
    )
    return output, flags, seconds[0]


def exact_match(model_dir: str, test_file: str, max_samples: int):
    """Greedy one-token-per-step diffusion sampling of the test answers, scored by diff-eval-arithmetic."""
    from diff_trainer.cli import eval_arithmetic as evaluation
    from diff_trainer.cli.generate import open_checkpoint, sampler_flags
    from diff_trainer.sampling.settings import sampler_for

    model, tokenizer, diffusion_config = open_checkpoint(model_dir)
    args = evaluation.build_parser().parse_args(
        ["--model", model_dir, "--test_file", test_file, "--gen_length", str(GEN_LENGTH), "--batch_size", "50"]
    )
    problems = evaluation.read_problems(test_file, diffusion_config["dff_token"])[:max_samples]
    prompt_ids = evaluation.prepare_prompts(args, tokenizer, diffusion_config, [p.prompt for p in problems])
    config = sampler_for(diffusion_config, tokenizer, **sampler_flags(args))
    return evaluation.evaluate_problems(model, tokenizer, problems, prompt_ids, args, config)


def reward_curve(output: str) -> list[list]:
    """Per logged step: train loss / reward accuracy / margin (mean since the last log) and the same on test pairs."""
    with open(os.path.join(output, "trainer_state.json")) as handle:
        history = json.load(handle)["log_history"]
    rows = {}
    for log in history:
        row = rows.setdefault(log["step"], {})
        for key in (
            "loss",
            "rewards/accuracies",
            "rewards/margins",
            "eval_loss",
            "eval_rewards/accuracies",
            "eval_rewards/margins",
            "eval_logps/chosen",
            "eval_logps/rejected",
        ):
            if key in log:
                row[key] = log[key]
    keys = (
        "loss",
        "rewards/accuracies",
        "rewards/margins",
        "eval_loss",
        "eval_rewards/accuracies",
        "eval_rewards/margins",
        "eval_logps/chosen",
        "eval_logps/rejected",
    )
    return [[step, *(rows[step].get(key, "") for key in keys)] for step in sorted(rows)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft_model", help="an arithmetic diffusion SFT checkpoint (default: train one)")
    parser.add_argument("--sft_steps", type=int, default=3000, help="SFT steps when training one")
    parser.add_argument(
        "--pairs",
        nargs="+",
        choices=PAIR_KINDS,
        default=list(PAIR_KINDS),
        help="train pairs: the SFT model's own mistakes (on_policy) and/or make_arithmetic's slips",
    )
    parser.add_argument("--dpo_steps", type=int, default=200)
    parser.add_argument("--eval_every", type=int, default=50, help="steps between reward evaluations")
    parser.add_argument("--max_samples", type=int, default=200, help="problems for exact match (test and train)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="SFT 300 steps, DPO 20 steps with evaluations every 10, 50 problems, in outputs/bench_dpo_quick/",
    )
    parser.add_argument(
        "--dpo_flags",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra run_diffusion_dpo.py flags, e.g. --dpo_flags --learning_rate 1e-4",
    )
    args = parser.parse_args(argv)
    args.bench_dir = BENCH_DIR
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)

    import torch

    torch.set_num_threads(args.threads)
    with results_file("dpo_arithmetic", args.quick):
        measure(args)


def measure(args):
    seconds = {}
    data_dir = prepare_data(args.bench_dir)
    sft_model = args.sft_model
    if sft_model is None:
        sft_model, sft_seconds = prepare_sft(data_dir, args.sft_steps, args.threads, args.bench_dir)
        seconds["SFT training" if sft_seconds else "SFT training (reused)"] = sft_seconds
    runs = {}
    for kind in args.pairs:
        output, flags, dpo_seconds = train_dpo(
            sft_model, data_dir, kind, args.dpo_steps, args.eval_every, args.threads, args.dpo_flags, args.bench_dir
        )
        seconds[f"DPO on {kind} pairs (with its evaluations){'' if dpo_seconds else ' (reused)'}"] = dpo_seconds
        runs[kind] = (output, flags)

    start = time.perf_counter()
    files = {split: os.path.join(data_dir, f"{split}.jsonl") for split in ("test", "train")}
    scores = {
        name: {split: exact_match(model, path, args.max_samples) for split, path in files.items()}
        for name, model in [("SFT (before DPO)", sft_model)]
        + [(f"SFT + VRPO on {kind} pairs", output) for kind, (output, _) in runs.items()]
    }
    seconds["exact-match sampling"] = time.perf_counter() - start

    print(f"## VRPO on arithmetic ({machine_summary(args.threads)})\n")
    for kind, (_, flags) in runs.items():
        print(f"- {kind}: `python {' '.join(flags)}`")
    baseline = scores["SFT (before DPO)"]
    rows = []
    for name, result in scores.items():
        row = [name]
        for split in ("test", "train"):
            accuracy = result[split].accuracy
            change = "" if result is baseline else f" ({100 * (accuracy - baseline[split].accuracy):+.1f})"
            correct = sum(record["correct"] for record in result[split].records)
            row.append(f"{100 * accuracy:.1f}%{change}, {correct}/{len(result[split].records)}")
        rows.append(row)
    print("\nExact match, greedy one-token-per-step sampling (change vs. SFT in points)\n")
    print(markdown_table(["model", "held-out test problems", "train problems (seen in DPO)"], rows))
    for kind, (output, _) in runs.items():
        print(
            f"\nReward curve, {kind} pairs (train: mean since the previous row; eval: 200 held-out test pairs "
            "with make_arithmetic's slips as rejected; step 0 = before training)\n"
        )
        print(
            markdown_table(
                [
                    "step",
                    "train loss",
                    "train reward acc",
                    "train margin",
                    "eval loss",
                    "eval reward acc",
                    "eval margin",
                    "eval logps chosen",
                    "eval logps rejected",
                ],
                reward_curve(output),
            )
        )
    print("\n" + markdown_table(["phase", "wall seconds"], [[name, f"{value:.0f}"] for name, value in seconds.items()]))


if __name__ == "__main__":
    main()
