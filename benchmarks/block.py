#!/usr/bin/env python
"""Block diffusion against the causal LM and masked diffusion: held-out perplexity, training-step time, sampling speed.

    python benchmarks/block.py [--steps 10] [--threads 2] [--batch_size 8] [--length 128] [--block_size 4]
    python benchmarks/block.py --quick      # 3 measured steps, shorter generations
    python benchmarks/block.py --perplexity [--train_steps 150]    # (a) trains four models on the demo corpus
    python benchmarks/block.py --arithmetic_model outputs/arithmetic_block \
        --causal_model outputs/arithmetic_strong_causal --test_file data/arithmetic/test.jsonl   # (c), trained

The tables also go to benchmarks/results/block[_quick|_perplexity|_arithmetic].md.

(a) `--perplexity`: the causal LM, block diffusion with L' = 4 and 16 and masked diffusion, each trained by
run_clm_diff.py with configs/demo.yaml (the same net, data, batches and steps: the same token budget; reused when
nothing changed), then scored on the corpus's validation rows: the causal LM's perplexity per predicted token, the
diffusion models' ELBO perplexity bound (`eval_elbo_perplexity`, `--eval_mc_samples` draws; block: a stratified time
per block).

(b) Training (default): every step is forward + backward of the same batch of random ids from identical weights
(fp32); the objectives run the code the trainer runs (`objectives.block.BlockDiffusion.loss`, `objectives.masked`),
the causal step the model's own shifted loss, the reference one forward per block over [x0 of the blocks before ;
x_t of the block] (what the vectorised pass must equal). The variants alternate inside each round, so load drifts hit
all. Then sampling at batch 1 on the same untrained weights (a threshold of 0.9 is rarely reached, so the block
sampler commits about one token per forward): the block sampler vs. the causal twin's `model.generate` (greedy, KV
cache), `--gen_length` new tokens after a `--prompt_length` prompt. Tokens/s is new tokens over wall time.

(c) `--arithmetic_model`: a trained block checkpoint (configs/arithmetic_block.yaml) and its causal twin on the
held-out addition problems, at batch 1 and 16 (`--batch_sizes`): the block sampler with threshold 0.9 and with one
token per step vs. the twin's `model.generate` (dynamic KV cache); NFE, tokens/s (completion tokens up to the first
EOS over generation time, interleaved in chunks as benchmarks/sampling.py does), exact match, and the generative
perplexity of temperature-1 samples under the twin.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from common import REPO_ROOT, cached_build, machine_summary, markdown_table, median, quiet, results_file
from diff_trainer.diffusion.attention import additive_mask
from diff_trainer.diffusion.losses import diffusion_loss_sum
from diff_trainer.diffusion.schedules import get_schedule
from diff_trainer.objectives.block import BlockDiffusion, BlockNoiser
from diff_trainer.objectives.masked import BatchNoiser, MaskedDiffusion, seeded_generator
from diff_trainer.sampling.block import generate as block_generate

VOCAB, MASK = 386, 385


def tiny_llama(causal: bool, seed: int = 0) -> LlamaForCausalLM:
    """The demo configs' Llama (hidden 128, 4 layers, 4 heads) with the byte tokenizer's vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(config)
    model.config.is_causal = causal
    return model


def loop_reference_loss(model, batch, block_size: int) -> torch.Tensor:
    """The block loss (normalisation llada_pretrain) with one forward per block after its clean prefix."""
    clean, noisy, masked = batch["clean_ids"], batch["input_ids"], batch["masked"]
    batch_size, length = clean.shape
    losses = torch.zeros(batch_size, length)
    for start in range(0, length, block_size):
        end = start + block_size
        ids = torch.cat([clean[:, :start], noisy[:, start:end]], dim=1)
        index = torch.arange(end)
        allowed = (index[None, :] // block_size <= index[:, None] // block_size)[None, None]
        logits = model(input_ids=ids, attention_mask=additive_mask(allowed)).logits[:, start:end]
        ce = F.cross_entropy(logits.transpose(1, 2), clean[:, start:end], reduction="none")
        losses[:, start:end] = ce * masked[:, start:end]
    per_block = losses.reshape(batch_size * (length // block_size), block_size)
    return diffusion_loss_sum(per_block, batch["loss_weight"].reshape(-1)) / (batch_size * length)


def training_variants(args, rows):
    """name -> (model, step function returning the loss) for the four training steps."""
    causal, diffusion = tiny_llama(True), tiny_llama(False)
    schedule = get_schedule("linear")
    block = BlockDiffusion(MASK, False, args.block_size, schedule, *[BlockNoiser(MASK, schedule, args.block_size)] * 2)
    masked = MaskedDiffusion(MASK, False, *[BatchNoiser(MASK, schedule)] * 2, None)
    clean = {"input_ids": rows, "labels": rows, "attention_mask": torch.ones_like(rows)}
    block_batch = block.train_noiser(clean, seeded_generator(1))
    masked_batch = masked.train_noiser(clean, seeded_generator(1))
    with torch.no_grad():
        vectorised, _ = block.loss(diffusion, block_batch, "llada_pretrain")
        reference = loop_reference_loss(diffusion, block_batch, args.block_size)
    print(
        f"vectorised block loss {float(vectorised):.6f}, loop over blocks {float(reference):.6f} "
        f"(difference {abs(float(vectorised - reference)):.1e})"
    )
    return {
        "causal LM": (causal, lambda: causal(input_ids=rows, labels=rows).loss),
        f"block diffusion L'={args.block_size}, vectorised": (
            diffusion,
            lambda: block.loss(diffusion, block_batch, "llada_pretrain")[0],
        ),
        "masked diffusion": (diffusion, lambda: masked.loss(diffusion, masked_batch, "llada_pretrain")[0]),
        f"block diffusion L'={args.block_size}, loop over blocks": (
            diffusion,
            lambda: loop_reference_loss(diffusion, block_batch, args.block_size),
        ),
    }


def time_training(args) -> None:
    rows = torch.randint(3, 259, (args.batch_size, args.length), generator=torch.Generator().manual_seed(0))
    variants = training_variants(args, rows)
    times = {name: [] for name in variants}
    for round_index in range(args.warmup + args.steps):
        for name, (model, step) in variants.items():
            start = time.perf_counter()
            step().backward()
            elapsed = time.perf_counter() - start
            model.zero_grad()
            if round_index >= args.warmup:
                times[name].append(elapsed)
    causal = median(times["causal LM"])
    table = [[name, median(values), median(values) / causal] for name, values in times.items()]
    print(
        f"\nTraining step (forward + backward), batch {args.batch_size} x {args.length} tokens, median of "
        f"{args.steps} steps after {args.warmup} warm-up:\n"
    )
    print(markdown_table(["step", "seconds", "x causal"], table))


@torch.no_grad()
def time_sampling(args) -> None:
    causal, diffusion = tiny_llama(True, seed=1), tiny_llama(False, seed=1)
    prompt = torch.randint(3, 259, (1, args.prompt_length), generator=torch.Generator().manual_seed(2))
    rows = []
    for _ in range(args.sampling_rounds):
        start = time.perf_counter()
        result = block_generate(
            diffusion,
            prompt.tolist(),
            block_size=args.block_size,
            mask_token_id=MASK,
            gen_length=args.gen_length,
            threshold=0.9,
        )
        block_seconds = time.perf_counter() - start
        start = time.perf_counter()
        output = causal.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=args.gen_length,
            min_new_tokens=args.gen_length,
            pad_token_id=0,
        )
        causal_seconds = time.perf_counter() - start
        assert output.shape[1] - prompt.shape[1] == args.gen_length
        rows.append((block_seconds, result.nfe, causal_seconds))
    block_seconds, nfe, causal_seconds = (median(column) for column in zip(*rows))
    print(
        f"\nSampling at batch 1: {args.gen_length} new tokens after a {args.prompt_length}-token prompt, median of "
        f"{args.sampling_rounds} runs (untrained weights):\n"
    )
    print(
        markdown_table(
            ["sampler", "forward passes", "tokens/s"],
            [
                [
                    f"block sampler L'={args.block_size}, threshold 0.9, exact KV cache",
                    int(nfe),
                    args.gen_length / block_seconds,
                ],
                ["causal twin, model.generate (greedy, KV cache)", args.gen_length, args.gen_length / causal_seconds],
            ],
        )
    )


PERPLEXITY_VARIANTS = {
    "causal LM": ["--train_diff_model", "false"],
    "block diffusion L'=4": ["--diffusion_objective", "block", "--diffusion_block_size", "4"],
    "block diffusion L'=16": ["--diffusion_objective", "block", "--diffusion_block_size", "16"],
    "masked diffusion": [],
}


def heldout_perplexity(args) -> None:
    """(a) Train every variant of PERPLEXITY_VARIANTS with configs/demo.yaml and print its held-out perplexity."""
    config = os.path.join("configs", "demo.yaml")
    common = ["--max_steps", str(args.train_steps), "--eval_strategy", "no", "--save_strategy", "no"]
    common += ["--max_eval_samples", str(args.eval_rows), "--eval_mc_samples", str(args.eval_mc_samples)]
    common += ["--block_size", str(args.row_length), "--warmup_steps", "0.05"]
    common += ["--config_overrides", args.ppl_net] if args.ppl_net else []
    table = []
    for name, flags in PERPLEXITY_VARIANTS.items():

        def train(out, flags=flags):
            environment = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            command = [sys.executable, "run_clm_diff.py", config, *flags, *common, "--output_dir", out]
            subprocess.run(command, cwd=REPO_ROOT, env=environment, check=True, stdout=subprocess.DEVNULL)

        slug = name.replace(" ", "_").replace("'", "")
        directory = cached_build(
            os.path.join(REPO_ROOT, "outputs", "bench_block", slug),
            {"flags": flags + common},
            [os.path.join(REPO_ROOT, config)],
            train,
            name,
        )
        with open(os.path.join(directory, "all_results.json"), encoding="utf-8") as handle:
            results = json.load(handle)
        kind = "exact" if "eval_elbo_perplexity" not in results else "bound (ELBO)"
        value = results.get("eval_elbo_perplexity", results.get("perplexity"))
        table.append([name, kind, value, results["train_runtime"] / 60])
    print(
        f"\nHeld-out perplexity per token, configs/demo.yaml's data, net {args.ppl_net or 'of configs/demo.yaml'}, "
        f"{args.train_steps} steps of 8 rows of {args.row_length} tokens each, {args.eval_rows} validation rows, "
        f"{args.eval_mc_samples} ELBO draws per row:\n"
    )
    print(markdown_table(["model", "perplexity", "value", "training minutes"], table))


def arithmetic_rows(block, causal, gen_length: int) -> list:
    """The samplers of part (c) as benchmarks/sampling.py's rows."""
    from diff_trainer.cli.generate import generate_causal
    from diff_trainer.sampling.settings import run_sampler, sampler_for
    from sampling import Row

    model, tokenizer, _ = block
    rows = []
    for name, settings in (("threshold 0.9", {"threshold": 0.9}), ("one token per step", {})):
        config = sampler_for(model, tokenizer, gen_length=gen_length, **settings)

        def sample(prompt_ids, temperature, seed, config=config):
            generator = torch.Generator().manual_seed(seed)
            result = run_sampler(model, prompt_ids, replace(config, temperature=temperature), generator=generator)
            return result.generated.tolist(), result.row_nfe, result.nfe

        flags = f"block_size={config.model_block_size} steps={config.steps} threshold={config.threshold}"
        rows.append(Row(f"block sampler, {name}", "diffusion", flags, sample))
    causal_model, causal_tokenizer, _ = causal

    def sample_causal(prompt_ids, temperature, seed):
        settings = argparse.Namespace(seed=seed, temperature=temperature, gen_length=gen_length)
        new_ids, forwards = generate_causal(causal_model, causal_tokenizer, prompt_ids, settings)
        return new_ids, [forwards] * len(new_ids), forwards

    rows.append(Row("causal twin, model.generate", "causal", "dynamic KV cache", sample_causal))
    return rows


def arithmetic_sampling(args) -> None:
    """(c) The trained block model's sampler against its causal twin's model.generate on held-out problems."""
    from diff_trainer.cli import eval_arithmetic as evaluation
    from diff_trainer.cli.generate import open_checkpoint
    from sampling import generative_perplexity, measure

    block, causal = open_checkpoint(args.arithmetic_model), open_checkpoint(args.causal_model)
    if (block[2] or {}).get("objective") != "block" or causal[2] is not None:
        sys.exit(
            f"error: --arithmetic_model must be a block-diffusion checkpoint and --causal_model a causal one "
            f"({args.arithmetic_model}, {args.causal_model})."
        )
    tokenizer, diffusion_config = block[1], block[2]
    problems = evaluation.read_problems(args.test_file, diffusion_config.get("dff_token") or "<DFF>")
    problems = problems[: args.max_samples]
    prompt_args = evaluation.build_parser().parse_args(["--model", "-", "--test_file", args.test_file])
    prompt_ids = evaluation.prepare_prompts(prompt_args, tokenizer, diffusion_config, [p.prompt for p in problems])
    answers = [problem.answer for problem in problems]
    exact_match = evaluation.load_exact_match()
    print(
        f"\nArithmetic: {len(problems)} problems of {args.test_file}, gen_length {args.gen_length}, greedy; "
        f"{args.arithmetic_model} (L'={diffusion_config['block_size']}) vs {args.causal_model}; generative "
        f"perplexity of {args.ppl_samples} temperature-1 samples under the causal twin"
    )
    for batch_size in args.batch_sizes:
        rows = arithmetic_rows(block, causal, args.gen_length)
        measure(rows, prompt_ids, batch_size, tokenizer.eos_token_id)
        table, speed, accuracy = [], {}, {}
        for row in rows:
            completions = [evaluation.completion_text(tokenizer, ids) for ids in row.completions]
            accuracy[row.name] = exact_match.compute(predictions=completions, references=answers)["exact_match"]
            speed[row.name] = row.tokens / row.seconds
            scored = prompt_ids[: args.ppl_samples]
            samples = row.sample(scored, 1.0, 0)[0]
            perplexity = generative_perplexity(causal[0], scored, samples, tokenizer.eos_token_id)
            table.append(
                [
                    row.name,
                    f"`{row.flags}`",
                    f"{sum(row.nfe) / len(row.nfe):.2f}",
                    f"{sum(row.forwards) / len(row.forwards):.2f}",
                    f"{speed[row.name]:.1f}",
                    f"{100 * accuracy[row.name]:.1f}",
                    f"{perplexity:.3f}",
                ]
            )
        headers = ["sampler", "settings", "NFE / sample", "forwards / batch", "tokens/s", "exact match %", "gen. ppl"]
        print(f"\nBatch size {batch_size}:\n")
        print(markdown_table(headers, table))
        ratio = speed["block sampler, threshold 0.9"] / speed["causal twin, model.generate"]
        points = 100 * (accuracy["block sampler, threshold 0.9"] - accuracy["causal twin, model.generate"])
        met = "met" if ratio >= 2 and abs(points) <= 1 else "NOT met"
        print(
            f"\nblock sampler with threshold 0.9: {ratio:.2f}x the twin's tokens/s, {points:+.1f} points of exact "
            f"match (goal at batch 1: >= 2x at +-1 point): {met}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--block_size", type=int, default=4)
    parser.add_argument("--gen_length", type=int, default=None, help="new tokens (default 64; 4 with (c))")
    parser.add_argument("--prompt_length", type=int, default=16)
    parser.add_argument("--sampling_rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 measured steps, 32 new tokens, one sampling run")
    parser.add_argument("--perplexity", action="store_true", help="(a): train the four models, held-out table")
    parser.add_argument("--train_steps", type=int, default=150, help="(a): training steps of every model")
    parser.add_argument("--eval_rows", type=int, default=64, help="(a): validation rows scored")
    parser.add_argument("--row_length", type=int, default=256, help="(a): tokens per row (a multiple of 16)")
    parser.add_argument("--ppl_net", default=None, help="(a): --config_overrides of the net (default: the demo's)")
    parser.add_argument("--eval_mc_samples", type=int, default=4, help="(a): ELBO draws per row")
    parser.add_argument("--arithmetic_model", help="(c): a trained block checkpoint (configs/arithmetic_block.yaml)")
    parser.add_argument("--causal_model", help="(c): its causal twin")
    parser.add_argument("--test_file", help="(c): held-out problems (data/arithmetic/test.jsonl)")
    parser.add_argument("--max_samples", type=int, default=500, help="(c): problems evaluated")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16], help="(c)")
    parser.add_argument("--ppl_samples", type=int, default=64, help="(c): samples scored by the causal twin")
    args = parser.parse_args()
    if args.arithmetic_model and not (args.causal_model and args.test_file):
        parser.error("--arithmetic_model needs --causal_model and --test_file.")
    if args.quick:
        args.steps, args.warmup, args.gen_length, args.sampling_rounds = 3, 1, 32, 1
    args.gen_length = args.gen_length or (4 if args.arithmetic_model else 64)
    quiet()
    torch.set_num_threads(args.threads)
    if args.perplexity:
        with results_file("block_perplexity"):
            heldout_perplexity(args)
    elif args.arithmetic_model:
        with results_file("block_arithmetic"):
            print(machine_summary(args.threads))
            with torch.no_grad():
                arithmetic_sampling(args)
    else:
        with results_file("block", args.quick):
            print(machine_summary(args.threads))
            time_training(args)
            time_sampling(args)


if __name__ == "__main__":
    main()
