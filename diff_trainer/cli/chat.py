"""`diff-chat`: talk with a chat-tuned checkpoint in the terminal, one turn after another.

    diff-chat --model outputs/chat_demo [--system TEXT] [--plain] [sampler flags of diff-generate]

Each line typed is a user turn; the whole conversation so far is rendered with the checkpoint tokenizer's chat
template (as `diff-generate --chat` does for one turn) and the reply, cut at the template's end of turn, joins the
history. On a terminal a diffusion checkpoint's reply is shown filling in its masks step by step (masks as blocks,
the tokens of the last step highlighted), or only as text with `--plain` (and whenever the output is not a
terminal); a causal checkpoint replies with `model.generate`.
An empty line is ignored; `/exit` or end of input (Ctrl-D) ends the session.
"""

from __future__ import annotations

import argparse
import sys

import torch

from diff_trainer.cli.generate import (
    add_sampling_arguments,
    chat_prompt_ids,
    chat_template_of,
    checked_sampler_config,
    completion_text,
    generate_causal,
    load_from_arguments,
    shown_mask_id,
)
from diff_trainer.sampling.render import ANSI_RESET, ANSI_STYLES, TokenPieces, frame_cells
from diff_trainer.sampling.settings import run_sampler, stop_ids

USER_PROMPT, MODEL_PROMPT = "you> ", "model> "
CLEAR_LINE = "\r\x1b[K"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-chat", description=__doc__.split("\n\n")[0])
    add_sampling_arguments(parser)
    parser.add_argument("--system", help="a system message that opens the conversation")
    parser.add_argument("--plain", action="store_true", help="print each reply as text, without its denoising")
    # what diff-generate's checks read: one conversation, one reply at a time
    parser.set_defaults(chat=True, samples=1, batch_size=1, output=None)
    return parser


def reply_frames(out, tokenizer, mask_token_id: int):
    """An on_step hook drawing the reply (masks and all) over the previous step's on the same line."""
    pieces = TokenPieces(tokenizer)

    def hook(frame):
        parts = []
        for cell in frame_cells(frame, 0, pieces, mask_token_id):
            if cell.kind == "prompt":
                continue
            text = cell.text.replace("\n", " ")
            parts.append(f"{ANSI_STYLES[cell.kind]}{text}{ANSI_RESET}" if ANSI_STYLES[cell.kind] else text)
        out.write(CLEAR_LINE + MODEL_PROMPT + "".join(parts))
        out.flush()

    return hook


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.suffix is not None or args.append_dff:
        parser.error("--suffix and --append_dff do not apply to a chat: the template frames every turn.")
    model, tokenizer, diffusion_config = load_from_arguments(parser, args)
    template, end_of_turn = chat_template_of(parser, tokenizer)
    stop = stop_ids(diffusion_config, tokenizer, (end_of_turn,))
    generator = torch.Generator(device=model.device).manual_seed(args.seed) if args.seed is not None else None
    messages = [{"role": "system", "content": args.system}] if args.system else []
    out = sys.stdout
    live = not args.plain and out.isatty()
    while True:
        try:
            line = input(USER_PROMPT)
        except EOFError:
            out.write("\n")
            break
        if line.strip() == "/exit":
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        prompt_ids = chat_prompt_ids(tokenizer, template, messages)
        config = checked_sampler_config(
            parser, args, diffusion_config, [prompt_ids], model, tokenizer, (), (end_of_turn,)
        )
        if config is None:
            new_ids = generate_causal(model, tokenizer, [prompt_ids], args, stop=stop)[0][0]
        else:
            hook = reply_frames(out, tokenizer, shown_mask_id(config)) if live else None
            new_ids = run_sampler(model, [prompt_ids], config, generator=generator, on_step=hook).generated[0]
            new_ids = new_ids.tolist()
        reply = completion_text(tokenizer, new_ids, stop)
        out.write(CLEAR_LINE * live + MODEL_PROMPT + reply + "\n")
        out.flush()
        messages.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    main()
