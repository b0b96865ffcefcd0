#!/usr/bin/env python
"""Measurement (not a test): variance of VRPO's preference score, and where a DPO step's time goes.

    python benchmarks/dpo_variance.py [--sft_model DIR] [--dpo_model DIR] [--pairs 64] [--draws 32] [--threads 1]
    python benchmarks/dpo_variance.py --quick     # dpo_arithmetic.py --quick's models, 8 pairs x 4 draws, 2 steps

Models: the arithmetic SFT checkpoint of benchmarks/dpo_arithmetic.py is the reference; the policy is the same
model (policy = reference, as at the start of DPO) or the DPO checkpoint that script trained ("after training").
Without --sft_model/--dpo_model both are made by running benchmarks/dpo_arithmetic.py's steps.

Variance. For each held-out pair the preference score ŝ = (B̂θ(y_w) − B̂ref(y_w)) − (B̂θ(y_l) − B̂ref(y_l)) is
estimated --draws times with fresh masks (budget n: n stratified mask counts, one mask each); its variance over
the draws is averaged over the pairs. "antithetic": the reference sees the policy's masks (VRPO); "independent":
the reference draws its own. The loss column is Var[−log σ(β·ŝ)] with β = 0.2. LLaDA 1.5 (Table 2) reports
Var(score) 44.0 at n=1 and ≈1.0 at n=8 with antithetic sampling, 2183.7 at n=4 without, for an 8B model.

Step time. One optimizer step of DiffusionDPOTrainer (batch --batch_size pairs, n = 8) against the sum of its
parts timed separately on the same batch: policy forward + ELBO, reference forward (no grad), backward, optimizer
step; and the same step with precomputed reference scores (no reference forward). Medians over --steps steps.
The batch is collated once; collating (drawing every pair's masks) is timed apart, as the data loader does it.
The tables also go to benchmarks/results/dpo_variance[_quick].md.
"""

import argparse
import copy
import math
import os
import statistics
import time

from common import machine_summary, markdown_table, quiet, results_file  # also puts the repository on sys.path

BUDGETS = (1, 2, 4, 8)
BETA = 0.2


def load(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def held_out_pairs(model_dir: str, data_dir: str, count: int):
    """The first `count` test pairs, tokenised as run_diffusion_dpo.py does with configs/dpo.yaml's settings."""
    from diff_trainer.data.preference import load_preference_data, tokenize_pairs
    from diff_trainer.models.loading import load_saved_tokenizer
    from diff_trainer.training.args.data import PreferenceDataArguments
    from dpo_arithmetic import BLOCK

    tokenizer = load_saved_tokenizer(model_dir)
    args = PreferenceDataArguments(
        train_file=os.path.join(data_dir, "test_pairs.jsonl"),
        max_length=BLOCK,
        max_prompt_length=8,
        prompt_suffix="<DFF>",
        max_train_samples=count,
    )
    raw, _ = load_preference_data(args)
    return tokenizer, list(tokenize_pairs(raw, tokenizer, args)["train"])


def score_variances(policy, reference, tokenizer, features, draws: int) -> dict:
    """{n: (Var ŝ antithetic, Var ŝ independent, Var loss antithetic, Var loss independent)} averaged over pairs."""
    import torch
    import torch.nn.functional as F

    from diff_trainer.data.preference import PreferenceCollator
    from diff_trainer.objectives.masked import elbo_samples, model_logits

    mask_id = policy.config.diffusion_config["mask_token_id"]
    results = {}
    pairs = len(features)
    for n in BUDGETS:
        collator = PreferenceCollator(mask_id, tokenizer.pad_token_id, num_samples=n, antithetic=False)
        shared, independent = [], []
        for draw in range(draws):
            collator.epoch = draw  # fresh masks for every pair
            batch = collator(features)
            with torch.no_grad():
                policy_scores = elbo_samples(model_logits(policy, batch["attention_mask"], n), batch, n).mean(1)
                logits = model_logits(reference, batch["attention_mask"], n)
                same_masks = elbo_samples(logits, batch, n).mean(1)
                own_masks = elbo_samples(logits, batch, n, prefix="ref_").mean(1)
            for store, reference_scores in ((shared, same_masks), (independent, own_masks)):
                ratio = policy_scores - reference_scores
                store.append(ratio[:pairs] - ratio[pairs:])  # ŝ per pair
        row = []
        for store in (shared, independent):
            scores = torch.stack(store)  # [draws, pairs]
            row.append(scores.var(dim=0).mean().item())
        for store in (shared, independent):
            losses = -F.logsigmoid(BETA * torch.stack(store))
            row.append(losses.var(dim=0).mean().item())
        results[n] = row
    return results


def variance_table(results: dict) -> str:
    rows = []
    base = results[BUDGETS[0]]
    for n in BUDGETS:
        shared, independent, loss_shared, loss_independent = results[n]
        factor = independent / shared if shared > 0 else math.inf
        rows.append(
            [
                n,
                f"{shared:.4g}",
                f"{independent:.4g}",
                "inf (exactly 0)" if math.isinf(factor) else f"{factor:.1f}x",
                f"{base[0] / shared:.2f}x" if shared > 0 else "-",
                f"{base[1] / independent:.2f}x",
                f"{loss_shared:.3g}",
                f"{loss_independent:.3g}",
            ]
        )
    return markdown_table(
        [
            "n",
            "Var ŝ antithetic",
            "Var ŝ independent",
            "antithetic reduction",
            "n=1 / n (antithetic)",
            "n=1 / n (independent)",
            "Var loss antithetic",
            "Var loss independent",
        ],
        rows,
    )


def step_times(policy_dir: str, tokenizer, features, batch_size: int, steps: int) -> list[list]:
    """Median seconds of a full DPO step vs. its parts, with a frozen reference and with precomputed scores."""
    from datasets import Dataset, DatasetDict

    from diff_trainer.training.args.dpo import DPOTrainingArguments
    from diff_trainer.training.dpo import DiffusionDPOTrainer, precompute_reference_scores

    data = Dataset.from_list(features[:batch_size])
    rows = []
    for name, precompute in (("frozen reference copy", False), ("precomputed reference scores", True)):
        args = DPOTrainingArguments(
            output_dir=os.path.join("/tmp", "dpo_step_times"),
            use_cpu=True,
            report_to="none",
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            learning_rate=1e-4,
            save_strategy="no",
            mc_samples=8,
            precompute_ref_scores=precompute,
        )
        policy = load(policy_dir)
        if precompute:
            data = precompute_reference_scores(DatasetDict({"train": data}), policy, tokenizer, args)["train"]
        trainer = DiffusionDPOTrainer(policy, args=args, processing_class=tokenizer, train_dataset=data)
        model = trainer.model.train()
        optimizer = trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(batch_size)])
        times = {key: [] for key in ("step", "policy forward", "reference forward", "backward", "optimizer", "collate")}

        def timed(key, action):
            start = time.perf_counter()
            result = action()
            times[key].append(time.perf_counter() - start)
            return result

        for index in range(steps + 2):  # two warm-up steps
            if index == 2:
                times = {key: [] for key in times}
            timed("step", lambda: (trainer.training_step(model, batch), optimizer.step(), optimizer.zero_grad()))
            terms = timed("policy forward", lambda: trainer.policy_terms(model, batch))
            if not precompute:
                timed("reference forward", lambda: trainer.reference_scores(model, batch))
            timed("backward", lambda: terms.mean().backward())
            timed("optimizer", lambda: (optimizer.step(), optimizer.zero_grad()))
            timed("collate", lambda: trainer.data_collator([trainer.train_dataset[i] for i in range(batch_size)]))
        medians = {key: statistics.median(values) if values else 0.0 for key, values in times.items()}
        parts = sum(value for key, value in medians.items() if key not in ("step", "collate"))
        rows.append(
            [
                name,
                f"{1000 * medians['step']:.1f}",
                f"{1000 * medians['policy forward']:.1f}",
                f"{1000 * medians['reference forward']:.1f}" if not precompute else "-",
                f"{1000 * medians['backward']:.1f}",
                f"{1000 * medians['optimizer']:.1f}",
                f"{1000 * parts:.1f}",
                f"{medians['step'] / parts:.2f}",
                f"{1000 * medians['collate']:.1f}",
            ]
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft_model", help="the reference (default: benchmarks/dpo_arithmetic.py's SFT model)")
    parser.add_argument("--dpo_model", help="a DPO-trained policy (default: benchmarks/dpo_arithmetic.py's)")
    parser.add_argument("--pairs", type=int, default=64, help="held-out pairs whose variance is averaged")
    parser.add_argument("--draws", type=int, default=32, help="independent estimates per pair")
    parser.add_argument("--batch_size", type=int, default=16, help="pairs per step in the timing table")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (medians)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--pairs 8 --draws 4 --steps 2 --batch_size 8 with dpo_arithmetic.py --quick's models",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.draws, args.steps, args.batch_size = 8, 4, 2, 8
    if args.batch_size > args.pairs:
        parser.error(f"--batch_size {args.batch_size} needs at least as many --pairs (got {args.pairs}).")

    import torch

    torch.set_num_threads(args.threads)
    quiet()
    with results_file("dpo_variance", args.quick):
        measure(args)


def measure(args):
    import dpo_arithmetic

    settings = (
        dpo_arithmetic.QUICK
        if args.quick
        else {"bench_dir": dpo_arithmetic.BENCH_DIR, "sft_steps": 3000, "dpo_steps": 200, "eval_every": 50}
    )
    data_dir = dpo_arithmetic.prepare_data(settings["bench_dir"])
    sft_model, dpo_model = args.sft_model, args.dpo_model
    if sft_model is None:  # reused when dpo_arithmetic.py made it with the same settings
        sft_model, _ = dpo_arithmetic.prepare_sft(data_dir, settings["sft_steps"], args.threads, settings["bench_dir"])
    if dpo_model is None:
        dpo_model, _, _ = dpo_arithmetic.train_dpo(
            sft_model,
            data_dir,
            "on_policy",
            settings["dpo_steps"],
            settings["eval_every"],
            args.threads,
            (),
            settings["bench_dir"],
        )
    tokenizer, features = held_out_pairs(sft_model, data_dir, args.pairs)
    reference = load(sft_model)

    print(f"## VRPO score variance ({machine_summary(args.threads)})\n")
    print(f"{len(features)} held-out pairs x {args.draws} draws; reference = {sft_model}\n")
    for title, policy in (
        ("policy = reference (start of DPO)", copy.deepcopy(reference)),
        (f"policy after DPO ({dpo_model})", load(dpo_model)),
    ):
        start = time.perf_counter()
        results = score_variances(policy, reference, tokenizer, features, args.draws)
        print(f"### {title} ({time.perf_counter() - start:.0f} s)\n\n{variance_table(results)}\n")

    print(f"### One DPO step: {args.batch_size} pairs, n = 8, milliseconds (median of {args.steps})\n")
    print(
        markdown_table(
            [
                "reference",
                "full step",
                "policy fwd + ELBO",
                "reference fwd",
                "backward",
                "optimizer",
                "sum of parts",
                "step / sum",
                "collate (not in step)",
            ],
            step_times(dpo_model, tokenizer, features, args.batch_size, args.steps),
        )
    )


if __name__ == "__main__":
    main()
