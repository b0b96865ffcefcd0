"""`diff-view`: watch a diffusion checkpoint fill in its masks, step by step, in the terminal or as a GIF.

    diff-view --model out/checkpoint-1000 --prompt "12+7=<DFF>" --gen_length 16 --steps 8
    diff-view --model out --prompt "def add(a, b):" --gen_length 64 --block_length 16 --gif sampling.gif

Masked positions are grey blocks, tokens committed in the current step are highlighted, and a header counts
the steps. The sampling flags are those of diff-generate.
"""

from __future__ import annotations

import argparse
import sys
import time

from diff_trainer.cli.generate import (
    add_sampling_arguments,
    check_output_path,
    encode_suffix,
    load_from_arguments,
    prepare_prompts,
    sampler_flags,
    shown_mask_id,
)
from diff_trainer.sampling.render import TokenPieces, render_gif, render_text
from diff_trainer.sampling.settings import run_sampler, sampler_for

CLEAR_SCREEN = "\x1b[2J\x1b[H"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-view", description=__doc__.split("\n\n")[0])
    add_sampling_arguments(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--gif", help="also write the frames to this animated GIF")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds per frame (terminal and GIF)")
    parser.add_argument("--no_color", action="store_true", help="plain text: new tokens in [brackets]")
    return parser


def replay(frames, tokenizer, mask_token_id: int, delay: float, color: bool, out=None) -> None:
    """Print the frames one after another (to stdout by default); on a terminal each replaces the last."""
    out = out or sys.stdout
    pieces = TokenPieces(tokenizer)
    live = out.isatty()
    for frame in frames:
        text = render_text(frame, 0, pieces, mask_token_id, len(frames), color=color)
        out.write((CLEAR_SCREEN if live else "") + text + "\n")
        out.flush()
        if delay > 0:
            time.sleep(delay)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_output_path(parser, "--gif", args.gif)
    model, tokenizer, diffusion_config = load_from_arguments(parser, args)
    if diffusion_config is None:
        parser.error(f"{args.model} is a causal checkpoint (no diffusion_config): it has no denoising steps to show.")
    try:
        config = sampler_for(model, tokenizer, **sampler_flags(args))
        prompt_ids = prepare_prompts(args, tokenizer, diffusion_config, [args.prompt])
        result = run_sampler(
            model, prompt_ids, config, encode_suffix(tokenizer, args.suffix), seed=args.seed, trace=True
        )
    except ValueError as error:
        parser.error(str(error))
    mask_id = shown_mask_id(config)
    replay(result.trace, tokenizer, mask_id, args.delay, color=not args.no_color)
    if args.gif:
        count = render_gif(result.trace, args.gif, tokenizer, mask_id, duration_ms=int(args.delay * 1000))
        print(f"wrote {count} frames to {args.gif}")


if __name__ == "__main__":
    main()
