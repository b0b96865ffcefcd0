#!/usr/bin/env python
"""Block diffusion: training-step time against the causal, masked-diffusion and loop-over-blocks steps, and block
sampler tokens/s against the causal twin's `model.generate`, on one untrained Llama of the demo configs' size.

    python benchmarks/block.py [--steps 10] [--threads 2] [--batch_size 8] [--length 128] [--block_size 4]
    python benchmarks/block.py --quick      # 3 measured steps, shorter generations

The tables also go to benchmarks/results/block[_quick].md.

Training: every step is forward + backward of the same batch of random ids from identical weights (fp32); the
objectives run the code the trainer runs (`objectives.block.BlockDiffusion.loss`, `objectives.masked`), the causal
step the model's own shifted loss, the reference one forward per block over [x0 of the blocks before ; x_t of the
block] (what the vectorised pass must equal). The variants alternate inside each round, so load drifts hit all.

Sampling (batch 1, untrained weights, so a threshold of 0.9 is rarely reached and the block sampler commits about one
token per forward): the block sampler with its exact KV cache vs. the causal twin's `model.generate` (greedy, KV
cache), `--gen_length` new tokens after a `--prompt_length` prompt. Tokens/s is new tokens over wall time.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from common import machine_summary, markdown_table, median, quiet, results_file
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--block_size", type=int, default=4)
    parser.add_argument("--gen_length", type=int, default=64)
    parser.add_argument("--prompt_length", type=int, default=16)
    parser.add_argument("--sampling_rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 measured steps, 32 new tokens, one sampling run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.gen_length, args.sampling_rounds = 3, 1, 32, 1
    quiet()
    torch.set_num_threads(args.threads)
    with results_file("block", args.quick):
        print(machine_summary(args.threads))
        time_training(args)
        time_sampling(args)


if __name__ == "__main__":
    main()
