#!/usr/bin/env python
"""Training-step speed: causal LM vs. masked diffusion with the same model, batch, optimizer and threads.

    python benchmarks/train_step.py [--steps 40] [--warmup 5] [--threads 2] [--batch_size 8] [--block_size 256]
    python benchmarks/train_step.py --quick      # 10 measured steps after 2 warm-up steps

The tables also go to benchmarks/results/train_step[_quick].md.

Both objectives start from identical weights of the demo configs' Llama (fp32) and train on the same packed rows of
the bundled corpus, each step collating them afresh. The causal LM runs `Trainer.training_step` (HF's shifted loss
inside the model); diffusion runs `DiffusionTrainer.training_step` (its `compute_loss`) on batches of the
`DiffusionCollator`. Both then clip gradients and step their own AdamW made by `Trainer.create_optimizer` with the
same arguments, as the Trainer's loop does. Steps alternate C D D C ... so drifting machine load hits both alike;
warm-up steps are excluded.

Every step is split into phases by timing the real calls: collate; the transformer body (a forward hook on the
decoder stack); LM head + loss (compute_loss minus the body); backward and the rest of training_step; optimizer
(clip + step + zero_grad).
"""

import argparse
import os
import tempfile
import time

import torch
from transformers import Trainer, default_data_collator, set_seed

from common import (
    DEMO_DIFFUSION_CONFIG,
    REPO_ROOT,
    load_average,
    machine_summary,
    markdown_table,
    median,
    quiet,
    read_config,
    results_file,
)
from diff_trainer.data.loading import load_raw_datasets
from diff_trainer.data.pipeline import Preprocessor
from diff_trainer.models.loading import add_special_tokens, load_model, load_tokenizer
from diff_trainer.objectives.masked import seeded_generator
from diff_trainer.training.args.data import DataArguments
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
from diff_trainer.training.args.model import ModelArguments
from diff_trainer.training.model import prepare_model
from diff_trainer.training.trainer import DiffusionTrainer

PHASES = ("collate", "transformer body", "LM head + loss", "backward", "optimizer")


class TimedStep:
    """One objective's real training step, with its phases timed through hooks on the calls it makes anyway."""

    def __init__(self, name: str, trainer: Trainer, collate, features):
        self.name, self.trainer, self.collate, self.features = name, trainer, collate, features
        self.model = trainer.model
        self.optimizer = trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop, read by training_step
        self.marks = {}
        body = self.model.get_decoder()
        body.register_forward_pre_hook(lambda *_: self.marks.__setitem__("body_start", time.perf_counter()))
        body.register_forward_hook(lambda *_: self.marks.__setitem__("body_end", time.perf_counter()))
        compute_loss = trainer.compute_loss

        def timed_compute_loss(*args, **kwargs):
            self.marks["loss_start"] = time.perf_counter()
            loss = compute_loss(*args, **kwargs)
            self.marks["loss_end"] = time.perf_counter()
            return loss

        trainer.compute_loss = timed_compute_loss
        self.phase_times = {phase: [] for phase in PHASES}
        self.totals, self.cpu_totals = [], []

    def step(self) -> float:
        """Run one step; record and return its wall-clock seconds."""
        trainer, marks = self.trainer, self.marks
        start, start_cpu = time.perf_counter(), time.process_time()
        batch = self.collate(self.features)
        collated = time.perf_counter()
        num_items = trainer._get_num_items_in_batch([batch], trainer.args.device)  # as Trainer's loop does
        trainer.training_step(self.model, batch, num_items)
        stepped = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), trainer.args.max_grad_norm)
        self.optimizer.step()
        self.model.zero_grad()
        end = time.perf_counter()
        body = marks["body_end"] - marks["body_start"]
        phases = {
            "collate": collated - start,
            "transformer body": body,
            "LM head + loss": marks["loss_end"] - marks["loss_start"] - body,
            "backward": stepped - collated - (marks["loss_end"] - marks["loss_start"]),
            "optimizer": end - stepped,
        }
        for phase, seconds in phases.items():
            self.phase_times[phase].append(seconds)
        self.totals.append(end - start)
        self.cpu_totals.append(time.process_time() - start_cpu)
        return end - start


def training_rows(tokenizer, batch_size: int, block_size: int, train_file: str):
    """The first `batch_size` packed rows of the bundled corpus, as the list of features a collator receives."""
    data_args = DataArguments(
        train_file=train_file, block_size=block_size, concatenate_texts=True, validation_split_percentage=0
    )
    raw = load_raw_datasets(data_args)
    rows = Preprocessor(tokenizer, data_args).run(raw)[0]["train"]
    return [rows[i] for i in range(batch_size)]


def build_steps(args, output_dir: str) -> tuple[TimedStep, TimedStep]:
    config = read_config(DEMO_DIFFUSION_CONFIG)
    model_args = ModelArguments(tokenizer_name="byte", model_type="llama", config_overrides=config["config_overrides"])
    tokenizer = load_tokenizer(model_args)
    # the mask token is added for both, so the two models have the same vocabulary and size
    new_token_ids = add_special_tokens(tokenizer, "<DFF>", model_args.mask_token)
    features = training_rows(tokenizer, args.batch_size, args.block_size, os.path.join(REPO_ROOT, config["train_file"]))

    def training_arguments(**diffusion):
        return DiffusionTrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch_size,
            learning_rate=config["learning_rate"],
            weight_decay=config["weight_decay"],
            use_cpu=True,
            report_to="none",
            seed=0,
            do_train=True,
            **diffusion,
        )

    set_seed(0)
    clm_model = load_model(model_args, tokenizer)
    set_seed(0)
    diffusion_args = training_arguments(train_diff_model=True, loss_normalization="llada_pretrain")
    diffusion_model = prepare_model(
        model_args,
        tokenizer,
        "diffusion",
        new_token_ids=new_token_ids,
        diffusion_settings={**diffusion_args.diffusion_settings(), "dff_token": "<DFF>"},
    )
    clm = Trainer(
        model=clm_model, args=training_arguments(), data_collator=default_data_collator, processing_class=tokenizer
    )
    diffusion = DiffusionTrainer(diffusion_model, diffusion_args, processing_class=tokenizer)

    def noised(rows):  # the clean batch and the forward process, as DiffusionTrainer.get_batch_samples does
        return diffusion.train_noiser(default_data_collator(rows), seeded_generator(0, 0, 0, 0))

    return (
        TimedStep("causal LM (Trainer)", clm, default_data_collator, features),
        TimedStep("masked diffusion (DiffusionTrainer)", diffusion, noised, features),
    )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="Measured steps per objective.")
    parser.add_argument("--warmup", type=int, default=5, help="Unmeasured steps per objective first.")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both objectives).")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="--steps 10 --warmup 2 (a few minutes on a busy CPU)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 10, 2
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    with results_file("train_step", args.quick):
        measure(args)


def measure(args):
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as output_dir:
        clm, diffusion = build_steps(args, output_dir)
        parameters = sum(p.numel() for p in clm.model.parameters())
        optimizer = getattr(clm.trainer.args.optim, "value", clm.trainer.args.optim)
        print(
            f"Llama of configs/demo.yaml: {parameters / 1e6:.2f}M parameters, fp32, batch {args.batch_size}×"
            f"{args.block_size}, {type(clm.optimizer).__name__} ({optimizer}) for both, "
            f"{args.warmup} warm-up + {args.steps} measured steps each; {machine_summary(args.threads)}.\n"
        )
        for _ in range(args.warmup):
            clm.step()
            diffusion.step()
        for timed in (clm, diffusion):
            timed.totals.clear()
            timed.cpu_totals.clear()
            for times in timed.phase_times.values():
                times.clear()
        for pair in range(args.steps):
            order = (clm, diffusion) if pair % 2 == 0 else (diffusion, clm)
            for timed in order:
                timed.step()

    tokens = args.batch_size * args.block_size
    rows = []
    for timed in (clm, diffusion):
        seconds = median(timed.totals)
        rows.append(
            [
                timed.name,
                1 / seconds,
                tokens / seconds,
                seconds * 1000,
                sum(timed.totals) / len(timed.totals) * 1000,
                median(timed.cpu_totals) * 1000,
            ]
        )
    print(
        markdown_table(
            ["objective", "steps/s", "tokens/s", "median ms/step", "mean ms/step", "median CPU ms/step"], rows
        )
    )
    ratio = median(diffusion.totals) / median(clm.totals)
    paired = median([d / c for d, c in zip(diffusion.totals, clm.totals)])
    cpu_ratio = median(diffusion.cpu_totals) / median(clm.cpu_totals)
    print(
        f"\ndiffusion / CLM step time: {paired:.3f} (median over adjacent pairs of steps), {ratio:.3f} (ratio of "
        f"medians), {cpu_ratio:.3f} (ratio of median CPU times). Target ≤ 1.05 (paired): "
        f"{'met' if paired <= 1.05 else 'MISSED'}; load average now {load_average()}.\n"
    )

    print("Median ms per phase; the difference is the median over adjacent pairs of steps:\n")
    phase_rows = []
    for phase in PHASES:
        c, d = clm.phase_times[phase], diffusion.phase_times[phase]
        phase_rows.append([phase, median(c) * 1000, median(d) * 1000, median([b - a for a, b in zip(c, d)]) * 1000])
    print(markdown_table(["phase", "causal LM", "diffusion", "diffusion − CLM"], phase_rows))


if __name__ == "__main__":
    main()
