"""`diff-eval-arithmetic`: exact-match accuracy of a checkpoint on prompt/answer problems, with its cost.

    diff-eval-arithmetic --model outputs/arith --test_file data/arithmetic/test.jsonl --threshold 0.9
    diff-eval-arithmetic --model outputs/arith_clm --test_file test.jsonl --max_samples 200 --output predictions.jsonl

The test file is JSON lines with "prompt" and "answer" fields, or with a "text" split at its first <DFF> (the
checkpoint's marker) as make_arithmetic.py writes it. A diffusion checkpoint is sampled with the sampler flags of
diff-generate and the sampler of its objective (masked, block or SEDD's), a causal one with `model.generate` (KV
cache), exactly as diff-generate does. Every prompt gets the
<DFF> marker appended, as in training (`prompt<DFF>answer`); a completion ends at its first EOS and is compared with
the answer by the exact_match metric (surrounding whitespace ignored).

Printed: the accuracy, the network forward passes per sample (NFE: for a diffusion checkpoint the passes each sample
took part in, as rows of a batch advance on their own; for a causal one those of its batch) and tokens/s: completion
tokens (up to and including the first EOS) per second spent in generation. `--output` writes one JSON record per
problem with the settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diff_trainer import metrics
from diff_trainer.cli.generate import (
    DEFAULT_DFF_TOKEN,
    add_sampling_arguments,
    checked_sampler_config,
    completion_text,
    generate_causal,
    load_from_arguments,
    prepare_prompts,
    write_records,
)
from diff_trainer.sampling.settings import run_sampler

EXACT_MATCH_MODULE = os.path.join(os.path.dirname(metrics.__file__), "exact_match")


@dataclass
class Problem:
    prompt: str
    answer: str


@dataclass
class Evaluation:
    """Per-problem records (prompt, answer, completion, correct, nfe) and the totals over them."""

    records: list[dict]
    accuracy: float
    nfe_per_sample: float
    completion_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        correct = sum(record["correct"] for record in self.records)
        return (
            f"exact match: {self.accuracy:.4f} ({correct}/{len(self.records)})\n"
            f"NFE per sample: {self.nfe_per_sample:.2f}\n"
            f"tokens/s: {self.tokens_per_second:.1f} "
            f"({self.completion_tokens} completion tokens in {self.seconds:.2f} s)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-eval-arithmetic", description=__doc__.split("\n\n")[0])
    add_sampling_arguments(parser)
    parser.add_argument(
        "--test_file",
        required=True,
        help="JSON lines with 'prompt' and 'answer', or a 'text' holding prompt<DFF>answer",
    )
    parser.add_argument("--max_samples", type=int, default=None, help="evaluate only the first N problems")
    parser.add_argument("--batch_size", type=int, default=16, help="problems generated together")
    parser.add_argument("--output", help="write one JSON record per problem to this .jsonl file")
    # Arithmetic answers are short (make_arithmetic's longest, "9801", + EOS fits in 8), the model was trained on
    # prompt<DFF>answer, and each problem gets one completion.
    parser.set_defaults(gen_length=8, append_dff=True, samples=1)
    return parser


def read_problems(path: str, dff_token: str = DEFAULT_DFF_TOKEN) -> list[Problem]:
    """Problems from JSON lines; a malformed line raises ValueError naming its number."""
    problems = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number}: not valid JSON ({error.msg}).") from None
        problem = _problem(record, dff_token)
        if problem is None:
            raise ValueError(
                f"{path} line {number}: needs string fields 'prompt' and 'answer', or a 'text' containing {dff_token}."
            )
        problems.append(problem)
    if not problems:
        raise ValueError(f"{path} holds no problems.")
    return problems


def _problem(record, dff_token: str) -> Problem | None:
    """The problem of one record, or None when the record has neither form."""
    if not isinstance(record, dict):
        return None
    prompt, answer = record.get("prompt"), record.get("answer")
    if isinstance(prompt, str) and isinstance(answer, str):
        return Problem(prompt, answer)
    text = record.get("text")
    if isinstance(text, str) and dff_token in text:
        return Problem(*text.split(dff_token, 1))
    return None


def load_exact_match():
    """The local exact-match evaluate module."""
    import evaluate

    return evaluate.load(EXACT_MATCH_MODULE)


def completion_length(ids: list[int], eos_token_id: int | None) -> int:
    """Tokens up to and including the first EOS (all of them when there is none)."""
    return ids.index(eos_token_id) + 1 if eos_token_id in ids else len(ids)


def evaluate_problems(
    model, tokenizer, problems: list[Problem], prompt_ids: list[list[int]], args, config
) -> Evaluation:
    """Generate an answer to every problem (diffusion with `config`, causal `model.generate` without) and score it."""
    generator = torch.Generator(device=model.device).manual_seed(args.seed) if args.seed is not None else None
    completions, nfes, tokens, seconds = [], [], 0, 0.0
    for first in range(0, len(problems), args.batch_size):
        batch_ids = prompt_ids[first : first + args.batch_size]
        start = time.perf_counter()
        if config is None:
            new_ids, forwards = generate_causal(model, tokenizer, batch_ids, args)
            row_nfe = [forwards] * len(new_ids)
        else:
            result = run_sampler(model, batch_ids, config, generator=generator)
            new_ids, row_nfe = result.generated.tolist(), result.row_nfe
        seconds += time.perf_counter() - start
        completions += [completion_text(tokenizer, ids) for ids in new_ids]
        tokens += sum(completion_length(ids, tokenizer.eos_token_id) for ids in new_ids)
        nfes += row_nfe

    answers = [problem.answer for problem in problems]
    scores = load_exact_match().compute(predictions=completions, references=answers, return_matches=True)
    records = [
        {"prompt": problem.prompt, "answer": problem.answer, "completion": completion, "correct": correct, "nfe": nfe}
        for problem, completion, correct, nfe in zip(problems, completions, scores["matches"], nfes)
    ]
    return Evaluation(records, scores["exact_match"], sum(nfes) / len(nfes), tokens, seconds)


def run_settings(args, config) -> dict:
    """What produced the predictions, stored with every output record."""
    settings = {
        "model": args.model,
        "test_file": args.test_file,
        "seed": args.seed,
        "sampler": "causal" if config is None else "diffusion",
    }
    settings.update(
        dataclasses.asdict(config)
        if config is not None
        else {"gen_length": args.gen_length, "temperature": args.temperature}
    )
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.max_samples is not None and args.max_samples < 1):
        parser.error("--batch_size and --max_samples must be at least 1.")
    model, tokenizer, diffusion_config = load_from_arguments(parser, args)
    dff_token = (diffusion_config or {}).get("dff_token") or DEFAULT_DFF_TOKEN
    try:
        problems = read_problems(args.test_file, dff_token)[: args.max_samples]
    except (OSError, ValueError) as error:
        parser.error(str(error))
    prompt_ids = prepare_prompts(args, tokenizer, diffusion_config, [problem.prompt for problem in problems])
    config = checked_sampler_config(parser, args, diffusion_config, prompt_ids, model, tokenizer)

    evaluation = evaluate_problems(model, tokenizer, problems, prompt_ids, args, config)
    print(evaluation.summary())
    if args.output:
        write_records(args.output, evaluation.records, run_settings(args, config))


if __name__ == "__main__":
    main()
