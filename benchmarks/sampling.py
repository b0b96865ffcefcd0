#!/usr/bin/env python
"""Sampling speed next to quality: the diffusion sampler's settings against the causal twin's `model.generate`.

    python benchmarks/sampling.py --model DIFFUSION_DIR --causal_model CAUSAL_DIR --test_file data/arithmetic/test.jsonl
    python benchmarks/sampling.py                # trains both models with configs/arithmetic_strong.yaml first
    python benchmarks/sampling.py --quick        # 300 training steps, 96 problems, 32 perplexity samples, 64 long

Without --model the script makes the fixed-width 2-digit addition problems (data_scripts/make_arithmetic.py) and
trains a masked-diffusion model and its causal twin (same network, data and steps; `--train_diff_model false`) with
configs/arithmetic_strong.yaml into outputs/bench_sampling/, reusing them when settings and inputs are unchanged.

For every diffusion setting (one token per step, half the steps, Fast-dLLM thresholds 0.9 / 0.7 / 0.5, and the
prefix and dual key/value caches) and for the causal model's `model.generate` with its dynamic KV cache and with a
static cache (compiled by transformers on a GPU), at batch 1 and 16 (`--batch_sizes`), it prints:
- NFE per sample (forward passes each row took part in; rows of a batch advance on their own) and forward passes of
  the batch per batch; the causal model's are its decoding steps;
- tokens/s: completion tokens up to and including the first EOS per second of generation, the rows interleaved on
  chunks of problems with rotating order so that machine load hits all alike (first batch of each row: warm-up);
- exact match on the test problems (greedy), and the change against one token per step in points;
- generative perplexity (MDLM / SEDD protocol): completions sampled at temperature 1 for the first `--ppl_samples`
  prompts, scored by the causal model as exp(mean NLL of the completion tokens up to the first EOS, given the prompt).
  The causal row scores its own samples, which favours it.
Then whether the issue's goals are met: threshold decoding >= 4x fewer NFE than one token per step at <= 1 point of
exact match lost; the best cached setting at least as many tokens/s as the faster `model.generate`, per batch size.

Answers of 3 digits are too short for a cache to pay off, so a second part times long generations on random weights
(as the issue's GPU figures): a Llama of `--long_hidden` / `--long_layers` with a byte vocabulary, bidirectional for
the sampler and the same weights causal for `model.generate`, `--long_prompt` random prompt tokens, `--long_gen` new
tokens in blocks of `--long_block`, at 1 and 4 tokens per step with each cache, against `model.generate` forced to
the same length. Only speed means something there (random weights). Everything printed also goes to
benchmarks/results/sampling[_quick].md.
"""

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

from common import (
    REPO_ROOT,
    cached_build,
    machine_summary,
    markdown_table,
    quiet,
    results_file,
    train_twins,
)

RECIPE = os.path.join("configs", "arithmetic_strong.yaml")
BENCH_DIR = os.path.join("outputs", "bench_sampling")
DATA = {"num_train": 9000, "num_test": 1000, "max_operand": 99, "operators": "+", "fixed_width": True, "seed": 0}
CAUSAL_FLAGS = ["--train_diff_model", "false"]
QUICK = {"max_steps": 300, "max_samples": 96, "ppl_samples": 32}
CHUNK = 32  # problems per interleaving round
BASELINE = "one token per step"
THRESHOLDS = ("0.9", "0.7", "0.5")


def diffusion_rows(gen_length: int) -> list[tuple[str, list[str]]]:
    """(name, diff-eval-arithmetic flags) of every diffusion setting."""
    one_per_step = ["--steps", str(gen_length)]
    rows = [(BASELINE, one_per_step), (f"{max(1, gen_length // 2)} steps", ["--steps", str(max(1, gen_length // 2))])]
    rows += [(f"threshold {t}", ["--threshold", t]) for t in THRESHOLDS]
    for cache in ("prefix", "dual"):
        rows += [
            (f"one token per step, {cache} cache", [*one_per_step, "--cache", cache]),
            (f"threshold 0.9, {cache} cache", ["--threshold", "0.9", "--cache", cache]),
        ]
    return rows


CAUSAL_ROWS = [("model.generate, dynamic KV cache", None), ("model.generate, static cache", "static")]
QUICK_LONG = {"long_gen": 64, "long_samples": 4}


@dataclass
class Row:
    """One sampler: `sample(prompt_ids, temperature, seed)` returns the new ids and the NFE of each row, and the
    forward passes of the batch."""

    name: str
    kind: str  # "diffusion" or "causal"
    flags: str
    sample: object
    seconds: float = 0.0
    tokens: int = 0
    nfe: list = field(default_factory=list)
    forwards: list = field(default_factory=list)
    completions: list = field(default_factory=list)


def prepare_models(threads, max_steps):
    """Data and both models of the recipe (reused when settings and inputs match): (diffusion, causal, test file)."""
    from data_scripts.make_arithmetic import make_arithmetic

    recipe = os.path.join(REPO_ROOT, RECIPE)
    if not os.path.exists(recipe):
        sys.exit(
            f"error: {RECIPE} (the recipe of the >= 80% exact-match model) is missing; pass --model, "
            "--causal_model and --test_file instead."
        )
    bench_dir = os.path.join(REPO_ROOT, BENCH_DIR + ("_quick" if max_steps else ""))
    data_dir = cached_build(
        os.path.join(bench_dir, "data"), DATA, [], lambda out: make_arithmetic(out, **DATA), "addition problems"
    )
    models = train_twins(bench_dir, RECIPE, data_dir, CAUSAL_FLAGS, threads, max_steps)
    return models["diffusion"], models["causal"], os.path.join(data_dir, "test.jsonl")


def build_rows(diffusion, causal, test_file, args) -> list[Row]:
    """Every sampler of the comparison, with the flags a user would type."""
    import torch

    from diff_trainer.cli import eval_arithmetic as evaluation
    from diff_trainer.cli.generate import generate_causal, sampler_flags
    from diff_trainer.sampling.masked import generate
    from diff_trainer.sampling.settings import sampler_for

    rows = []
    model, tokenizer, diffusion_config = diffusion
    for name, flags in diffusion_rows(args.gen_length):
        if args.block_length:
            flags = [*flags, "--block_length", str(args.block_length)]
        parsed = evaluation.build_parser().parse_args(
            ["--model", "-", "--test_file", test_file, "--gen_length", str(args.gen_length), *flags]
        )
        config = sampler_for(diffusion_config, tokenizer, **sampler_flags(parsed))

        def sample(prompt_ids, temperature, seed, config=config):
            generator = torch.Generator(device=model.device).manual_seed(seed)
            result = generate(model, prompt_ids, replace(config, temperature=temperature), generator=generator)
            return result.generated.tolist(), result.row_nfe, result.nfe

        rows.append(Row(name, "diffusion", " ".join(flags), sample))
    causal_model, causal_tokenizer, _ = causal
    for name, cache_implementation in CAUSAL_ROWS:

        def sample(prompt_ids, temperature, seed, cache_implementation=cache_implementation):
            settings = SimpleNamespace(seed=seed, temperature=temperature, gen_length=args.gen_length)
            new_ids, forwards = generate_causal(
                causal_model, causal_tokenizer, prompt_ids, settings, cache_implementation
            )
            return new_ids, [forwards] * len(new_ids), forwards

        flags = f"cache_implementation={cache_implementation or 'dynamic'}"
        rows.append(Row(name, "causal", flags, sample))
    return rows


def measure(rows: list[Row], prompt_ids, batch_size: int, eos_token_id: int) -> None:
    """Greedy completions of every prompt by every row, interleaved by chunks (rotating order), timed per batch."""
    from diff_trainer.cli.eval_arithmetic import completion_length

    for row in rows:
        row.sample(prompt_ids[:batch_size], 0.0, 0)  # warm-up
    chunk = max(CHUNK, batch_size)
    for round_index, start in enumerate(range(0, len(prompt_ids), chunk)):
        shift = round_index % len(rows)
        for row in rows[shift:] + rows[:shift]:
            for first in range(start, min(start + chunk, len(prompt_ids)), batch_size):
                began = time.perf_counter()
                new_ids, nfe, forwards = row.sample(prompt_ids[first : first + batch_size], 0.0, 0)
                row.seconds += time.perf_counter() - began
                row.tokens += sum(completion_length(ids, eos_token_id) for ids in new_ids)
                row.nfe += nfe
                row.forwards.append(forwards)
                row.completions += new_ids


def generative_perplexity(causal_model, prompt_ids, samples, eos_token_id) -> float:
    """exp(mean NLL per completion token) under the causal model, completions cut after their first EOS."""
    import torch

    from diff_trainer.cli.eval_arithmetic import completion_length

    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, new in zip(prompt_ids, samples):
            kept = new[: completion_length(new, eos_token_id)]
            ids = torch.tensor([prompt + kept], device=causal_model.device)
            log_probs = causal_model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
            total -= float(log_probs.gather(-1, ids[0, len(prompt) :, None]).sum())
            count += len(kept)
    return math.exp(total / count)


def report(rows: list[Row], accuracies: dict, perplexities: dict, batch_size: int) -> list[str]:
    """The table of one batch size."""
    baseline = next(row for row in rows if row.name == BASELINE)
    table = []
    for row in rows:
        nfe = sum(row.nfe) / len(row.nfe)
        ratio = f"{sum(baseline.nfe) / sum(row.nfe):.2f}x" if row.kind == "diffusion" else "n/a (other model)"
        points = 100 * (accuracies[row.name] - accuracies[BASELINE])
        table.append(
            [
                row.name,
                f"`{row.flags}`",
                f"{nfe:.2f}",
                ratio,
                f"{sum(row.forwards) / len(row.forwards):.2f}",
                f"{row.tokens / row.seconds:.0f}",
                f"{100 * accuracies[row.name]:.1f}",
                f"{points:+.1f}" if row.kind == "diffusion" else "n/a",
                f"{perplexities[row.name]:.3f}",
            ]
        )
    headers = [
        "sampler",
        "settings",
        "NFE / sample",
        "fewer NFE than one per step",
        "forwards / batch",
        "tokens/s",
        "exact match %",
        "vs one per step (points)",
        "generative perplexity",
    ]
    return [f"\n## Batch size {batch_size}\n", markdown_table(headers, table)]


def goals(results: dict, accuracies: dict) -> list[str]:
    """Whether each of the issue's goals is met, per batch size."""
    lines = ["\n## Goals\n"]
    for batch_size, rows in results.items():
        baseline = next(row for row in rows if row.name == BASELINE)
        for row in rows:
            if row.name.startswith("threshold") and "cache" not in row.name:
                ratio = sum(baseline.nfe) / sum(row.nfe)
                loss = 100 * (accuracies[BASELINE] - accuracies[row.name])
                met = "met" if ratio >= 4 and loss <= 1 else "NOT met"
                lines.append(
                    f"- batch {batch_size}, {row.name}: {ratio:.2f}x fewer NFE, {loss:+.1f} points of exact "
                    f"match lost: goal (>= 4x at <= 1 point) {met}"
                )
        cached = max(
            (row for row in rows if "cache" in row.name and row.kind == "diffusion"),
            key=lambda row: row.tokens / row.seconds,
        )
        autoregressive = max((row for row in rows if row.kind == "causal"), key=lambda row: row.tokens / row.seconds)
        speed, reference = cached.tokens / cached.seconds, autoregressive.tokens / autoregressive.seconds
        met = "met" if speed >= reference else "NOT met"
        lines.append(
            f"- batch {batch_size}: fastest cached setting ({cached.name}) {speed:.0f} tokens/s vs the "
            f"faster model.generate ({autoregressive.name}) {reference:.0f} tokens/s "
            f"({speed / reference:.2f}x): goal (>= 1x) {met}"
        )
    return lines


def long_rows(args):
    """Rows of the long-generation part: random-weight twins, k tokens per step with each cache, model.generate."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from diff_trainer.sampling.masked import SamplerConfig, generate

    vocab, mask = 260, 259
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.long_hidden,
        intermediate_size=4 * args.long_hidden,
        num_hidden_layers=args.long_layers,
        num_attention_heads=max(1, args.long_hidden // 64),
        max_position_embeddings=args.long_prompt + args.long_gen,
    )
    torch.manual_seed(0)
    causal = AutoModelForCausalLM.from_config(config).to(args.device).eval()
    config.is_causal = False
    bidirectional = AutoModelForCausalLM.from_config(config).to(args.device).eval()
    bidirectional.load_state_dict(causal.state_dict())
    rows = []
    for per_step in (1, 4):
        for cache in ("none", "prefix", "dual"):
            sampler = SamplerConfig(
                mask_token_id=mask,
                gen_length=args.long_gen,
                block_length=args.long_block,
                steps=args.long_gen // per_step,
                cache=cache,
            )

            def sample(prompt_ids, temperature, seed, sampler=sampler):
                result = generate(bidirectional, prompt_ids, sampler)
                return result.generated.tolist(), result.row_nfe, result.nfe

            rows.append(
                Row(
                    f"{per_step} token{'s' * (per_step > 1)} per step, cache {cache}",
                    "diffusion",
                    f"steps={sampler.steps} cache={cache}",
                    sample,
                )
            )
    for name, cache_implementation in CAUSAL_ROWS:

        def sample(prompt_ids, temperature, seed, cache_implementation=cache_implementation):
            ids = torch.tensor(prompt_ids, device=args.device)
            with torch.no_grad():
                output = causal.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=args.long_gen,
                    min_new_tokens=args.long_gen,
                    pad_token_id=0,
                    cache_implementation=cache_implementation,
                )
            return output[:, ids.shape[1] :].tolist(), [args.long_gen] * len(ids), args.long_gen

        rows.append(Row(name, "causal", f"cache_implementation={cache_implementation or 'dynamic'}", sample))
    return rows, sum(p.numel() for p in causal.parameters())


def run_long(args) -> list[str]:
    """Tokens/s of long generations on random weights, per batch size."""
    import torch

    generator = torch.Generator().manual_seed(0)
    samples = max(args.long_samples, max(args.batch_sizes))
    prompts = torch.randint(3, 259, (samples, args.long_prompt), generator=generator).tolist()
    lines = []
    for batch_size in args.batch_sizes:
        rows, parameters = long_rows(args)
        measure(rows, prompts[: max(args.long_samples, batch_size)], batch_size, eos_token_id=None)
        table = [
            [row.name, f"{sum(row.forwards) / len(row.forwards):.1f}", f"{row.tokens / row.seconds:.1f}"]
            for row in rows
        ]
        lines += [
            f"\n## Long generations, random weights, batch size {batch_size}\n",
            markdown_table(["sampler", "forwards / batch", "tokens/s"], table),
        ]
        cached = max(
            (row for row in rows if row.kind == "diffusion" and "cache none" not in row.name),
            key=lambda row: row.tokens / row.seconds,
        )
        uncached = {row.name.split(",")[0]: row for row in rows if "cache none" in row.name}
        autoregressive = max((row for row in rows if row.kind == "causal"), key=lambda row: row.tokens / row.seconds)
        speed, reference = cached.tokens / cached.seconds, autoregressive.tokens / autoregressive.seconds
        plain = uncached[cached.name.split(",")[0]]
        lines.append(
            f"\n- fastest cached setting ({cached.name}): {speed:.1f} tokens/s, "
            f"{speed / (plain.tokens / plain.seconds):.2f}x the same steps without cache, "
            f"{speed / reference:.2f}x {autoregressive.name} ({reference:.1f} tokens/s): "
            f"goal (>= 1x) {'met' if speed >= reference else 'NOT met'}"
        )
    header = (
        f"\n# Long generations: Llama hidden {args.long_hidden}, {args.long_layers} layers ({parameters:,} "
        f"parameters, random weights), prompt {args.long_prompt}, {args.long_gen} new tokens, blocks of "
        f"{args.long_block}, {max(args.long_samples, 1)} prompts per batch size"
    )
    return [header, *lines]


def run(args):
    import torch

    from diff_trainer.cli import eval_arithmetic as evaluation
    from diff_trainer.cli.generate import open_checkpoint

    quiet()
    started = time.perf_counter()
    if args.model is None:
        diffusion_dir, causal_dir, test_file = prepare_models(args.threads, QUICK["max_steps"] if args.quick else None)
        test_file = args.test_file or test_file
    else:
        diffusion_dir, causal_dir, test_file = args.model, args.causal_model, args.test_file
    device = args.device
    diffusion = open_checkpoint(diffusion_dir, device=device)
    causal = open_checkpoint(causal_dir, device=device)
    if diffusion[2] is None or causal[2] is not None:
        sys.exit(
            f"error: --model must be a diffusion checkpoint and --causal_model a causal one "
            f"({diffusion_dir}, {causal_dir})."
        )
    tokenizer = diffusion[1]
    dff_token = diffusion[2].get("dff_token") or evaluation.DEFAULT_DFF_TOKEN
    problems = evaluation.read_problems(test_file, dff_token)[: args.max_samples]
    prompt_args = evaluation.build_parser().parse_args(["--model", "-", "--test_file", test_file])
    prompt_ids = evaluation.prepare_prompts(prompt_args, tokenizer, diffusion[2], [p.prompt for p in problems])
    answers = [problem.answer for problem in problems]
    exact_match = evaluation.load_exact_match()

    accuracies, perplexities, results = {}, {}, {}
    for batch_size in args.batch_sizes:
        rows = build_rows(diffusion, causal, test_file, args)
        measure(rows, prompt_ids, batch_size, tokenizer.eos_token_id)
        for row in rows:
            completions = [evaluation.completion_text(tokenizer, ids) for ids in row.completions]
            accuracies[row.name] = exact_match.compute(predictions=completions, references=answers)["exact_match"]
        results[batch_size] = rows
    ppl_prompts = prompt_ids[: args.ppl_samples]
    for row in results[max(args.batch_sizes)]:
        samples = []
        for first in range(0, len(ppl_prompts), max(args.batch_sizes)):
            samples += row.sample(ppl_prompts[first : first + max(args.batch_sizes)], 1.0, first)[0]
        perplexities[row.name] = generative_perplexity(causal[0], ppl_prompts, samples, tokenizer.eos_token_id)

    print(
        f"\n# Sampling: {len(problems)} problems of {test_file}, gen_length {args.gen_length}, block_length "
        f"{args.block_length or args.gen_length}, greedy; generative perplexity of {len(ppl_prompts)} samples at "
        f"temperature 1 under {causal_dir}"
    )
    lines = []
    for batch_size, rows in results.items():
        lines += report(rows, accuracies, perplexities, batch_size)
    lines += goals(results, accuracies)
    print("\n".join(lines))
    print("\n".join(run_long(args)))
    compiled = "yes" if torch.device(device).type == "cuda" else "no (transformers compiles it on GPUs only)"
    print(
        f"\nStatic cache compiled: {compiled}. Models: {diffusion_dir}, {causal_dir} "
        f"({sum(p.numel() for p in diffusion[0].parameters()):,} parameters each)."
    )
    print(f"Machine: {machine_summary()}. Time: {(time.perf_counter() - started) / 60:.1f} min.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"a diffusion checkpoint (default: train one with {RECIPE})")
    parser.add_argument("--causal_model", help="its causal twin (needed with --model)")
    parser.add_argument("--test_file", help="prompt/answer JSON lines (needed with --model)")
    parser.add_argument("--gen_length", type=int, default=4, help="tokens generated per problem (answer + EOS)")
    parser.add_argument("--block_length", type=int, default=None, help="semi-autoregressive blocks (default: one)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max_samples", type=int, default=512, help="test problems (exact match, tokens/s)")
    parser.add_argument("--ppl_samples", type=int, default=256, help="prompts sampled for generative perplexity")
    parser.add_argument("--long_hidden", type=int, default=256, help="long part: hidden size of the random Llama")
    parser.add_argument("--long_layers", type=int, default=4, help="long part: its layers")
    parser.add_argument("--long_prompt", type=int, default=64, help="long part: prompt tokens")
    parser.add_argument("--long_gen", type=int, default=256, help="long part: new tokens")
    parser.add_argument("--long_block", type=int, default=32, help="long part: block length")
    parser.add_argument("--long_samples", type=int, default=16, help="long part: prompts per batch size")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training and sampling")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"train {QUICK['max_steps']} steps (outputs/bench_sampling_quick/), "
        f"--max_samples {QUICK['max_samples']}, --ppl_samples {QUICK['ppl_samples']}",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.max_samples, args.ppl_samples = QUICK["max_samples"], QUICK["ppl_samples"]
        args.long_gen, args.long_samples = QUICK_LONG["long_gen"], QUICK_LONG["long_samples"]
    if args.long_gen % args.long_block or args.long_block % 4:
        parser.error("--long_gen must be a multiple of --long_block, itself a multiple of 4 (4 tokens per step).")
    if args.model is not None and (args.causal_model is None or args.test_file is None):
        parser.error("--model needs --causal_model and --test_file (or leave all three out to train them).")
    if min(args.batch_sizes) < 1 or args.max_samples < 1 or args.ppl_samples < 1:
        parser.error("--batch_sizes, --max_samples and --ppl_samples must be at least 1.")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with results_file("sampling", args.quick):
        run(args)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
