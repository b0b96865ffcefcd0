"""`diff-generate-cascade`: sample a cascade of diffusion checkpoints, each stage's output the next one's prompt.

    diff-generate-cascade --stages outputs/docstrings-llama-tiny-stage{1,2,3} --samples 4 --temperature 0.8
    diff-generate-cascade --stages S1 S2 S3 --gen_length 48 96 160 --output cascade.jsonl --gif cascade.gif

Stage 1 is sampled unconditionally (its prompt is `<DFF>`, as its training records `<DFF> K1`); stage s > 1 is
prompted with `{output of stage s-1} <DFF>`, as its records `K1 <DFF> K2` and `K2 <DFF> text`. Each stage is a
checkpoint sampled like diff-generate (same sampling flags; --gen_length and --steps take one value or one per
stage). --verbose prints every intermediate state of every stage, --gif draws the first sample's stages one after
the other, and the .jsonl --output keeps every stage's text of every sample.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from diff_trainer.cli.generate import (
    DEFAULT_DFF_TOKEN,
    _print_step,
    add_sampling_arguments,
    check_output_path,
    checked_sampler_config,
    completion_text,
    encode_prompts,
    load_from_arguments,
    shown_mask_id,
)
from diff_trainer.sampling.render import render_gif
from diff_trainer.sampling.settings import run_sampler, stop_ids


def build_parser() -> argparse.ArgumentParser:
    # "resolve": --gen_length and --steps below replace diff-generate's single-value flags
    parser = argparse.ArgumentParser(
        prog="diff-generate-cascade", description=__doc__.split("\n\n")[0], conflict_handler="resolve"
    )
    parser.add_argument(
        "--stages", nargs="+", required=True, metavar="CKPT", help="the stages' checkpoint directories, stage 1 first"
    )
    add_sampling_arguments(parser, with_model=False)
    parser.add_argument(
        "--gen_length", type=int, nargs="+", help="tokens per stage: one value or one per stage (default 64)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        help="denoising steps: one value or one per stage (default: the stage's gen_length)",
    )
    parser.add_argument("--samples", type=int, default=1, help="cascades to sample (stage-1 outputs)")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences sampled together")
    parser.add_argument("--output", help="write every sample's stage texts to this .jsonl file")
    parser.add_argument("--verbose", action="store_true", help="print every intermediate state of every stage")
    parser.add_argument("--gif", help="draw the first sample's stages, one after the other, into this GIF")
    return parser


def per_stage(parser, values: list[int] | None, stages: int, flag: str, default: list) -> list:
    """One value per stage from a flag given once (for every stage) or once per stage."""
    if values is None:
        return default
    if len(values) not in (1, stages):
        parser.error(f"{flag} takes one value or one per stage ({stages}), got {len(values)}.")
    return values * stages if len(values) == 1 else values


def stage_prompt(previous: str, dff_token: str) -> str:
    """Stage s's prompt: stage s-1's text then <DFF> (stage 1: `<DFF>` alone), as the stage's training records."""
    return f"{previous} {dff_token}" if previous else dff_token


def sample_stage(parser, args, stage: int, previous: list[str], trace: bool):
    """(texts, trace of the first batch, shown mask id, tokenizer, sampler settings) of one stage prompted with
    `previous`."""
    model, tokenizer, diffusion_config = load_from_arguments(parser, args)
    if diffusion_config is None:
        parser.error(
            f"--stages {args.model}: a causal checkpoint (no diffusion_config); every cascade stage is a "
            "diffusion model trained by diff-train-cascade."
        )
    dff = diffusion_config.get("dff_token") or DEFAULT_DFF_TOKEN
    prompt_ids = encode_prompts(tokenizer, [stage_prompt(text, dff) for text in previous])
    config = checked_sampler_config(parser, args, diffusion_config, prompt_ids, model, tokenizer)
    stop = stop_ids(diffusion_config, tokenizer)
    generator = torch.Generator(device=model.device).manual_seed(args.seed + stage) if args.seed is not None else None
    texts, frames = [], None
    for first in range(0, len(prompt_ids), args.batch_size):
        hook = _print_step(tokenizer, shown_mask_id(config), first) if args.verbose else None
        result = run_sampler(
            model,
            prompt_ids[first : first + args.batch_size],
            config,
            generator=generator,
            on_step=hook,
            trace=trace and first == 0,
        )
        frames = frames or result.trace
        texts += [completion_text(tokenizer, ids, stop).strip() for ids in result.generated.tolist()]
    return texts, frames, shown_mask_id(config), tokenizer, dataclasses.asdict(config)


def write_gif(parser, path: str, stage_frames: list) -> int:
    """The first sample's frames of all stages in one GIF, steps numbered across the stages."""
    mask_ids = {mask_id for _, mask_id, _ in stage_frames}
    vocabularies = {len(tokenizer) for _, _, tokenizer in stage_frames}
    if len(mask_ids) > 1 or len(vocabularies) > 1:
        parser.error("--gif draws all stages with one tokenizer: these stages have different vocabularies.")
    frames, offset = [], 0
    for stage_trace, _, _ in stage_frames:
        frames += [dataclasses.replace(frame, step=frame.step + offset) for frame in stage_trace]
        offset += len(stage_trace)
    return render_gif(frames, path, stage_frames[-1][2], mask_ids.pop())


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    count = len(args.stages)
    lengths = per_stage(parser, args.gen_length, count, "--gen_length", [64] * count)
    steps = per_stage(parser, args.steps, count, "--steps", lengths)
    if args.append_dff or args.suffix is not None:
        parser.error(
            "--append_dff and --suffix do not apply to a cascade: each stage's prompt is the previous "
            "stage's text followed by <DFF>, and nothing follows the generated text."
        )
    check_output_path(parser, "--output", args.output)
    check_output_path(parser, "--gif", args.gif)
    if args.output and not args.output.endswith(".jsonl"):
        parser.error(f"--output {args.output}: the cascade's records are written as .jsonl.")
    texts, stage_texts, stage_frames, settings = [""] * args.samples, [], [], []
    for stage, (path, length, stage_steps) in enumerate(zip(args.stages, lengths, steps), start=1):
        print(f"== stage {stage}: {path}", flush=True)
        stage_args = argparse.Namespace(**{**vars(args), "model": path, "gen_length": length, "steps": stage_steps})
        texts, frames, mask_id, tokenizer, config = sample_stage(parser, stage_args, stage, texts, bool(args.gif))
        stage_texts.append(texts)
        stage_frames.append((frames, mask_id, tokenizer))
        settings.append({"model": path, **config})
    records = [
        {"sample": index, "stages": [texts[index] for texts in stage_texts], "text": stage_texts[-1][index]}
        for index in range(args.samples)
    ]
    for record in records:
        print(f"--- sample {record['sample'] + 1}/{args.samples}")
        for stage, text in enumerate(record["stages"], start=1):
            print(f"stage {stage}: {text}")
    if args.gif:
        print(f"Wrote {write_gif(parser, args.gif, stage_frames)} frames to {args.gif}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps({**record, "seed": args.seed, "settings": settings}, ensure_ascii=False) + "\n")
        print(f"Wrote {len(records)} cascades to {args.output}")


if __name__ == "__main__":
    main()
