"""Score a chat checkpoint on held-out conversations: every assistant turn is generated from the conversation before
it (the earlier replies as the data holds them, so a follow-up sees the turns it refers to) and compared with the
data's reply: the share of exact matches and the mean token F1 (SQuAD's overlap of whitespace tokens), overall and
per kind of question of data_scripts/make_chat_corpus.py.

    python benchmarks/chat_replies.py --model outputs/chat_demo --gen_length 48 --block_length 8 --seed 0 \
        --output outputs/chat_demo_replies.jsonl

The sampler flags are diff-generate's (`--steps` defaults to `--gen_length`: one token per step). `--output` gets
one JSON line per reply, and a `.json` beside it (same stem) the scores. A turn whose conversation so far and
`--gen_length` do not fit the model's context is left out and counted.
"""

import argparse
import json
import os

import torch
from tqdm import tqdm

from common import markdown_table
from data_scripts.make_chat_corpus import QUESTIONS
from diff_trainer.cli.generate import (
    add_sampling_arguments,
    chat_prompt_ids,
    chat_template_of,
    check_output_path,
    checked_sampler_config,
    completion_text,
    load_from_arguments,
)
from diff_trainer.data.io import read_jsonl, write_jsonl
from diff_trainer.metrics.words import token_f1
from diff_trainer.sampling.masked import context_length
from diff_trainer.sampling.settings import run_sampler, stop_ids

QUESTION_KINDS = {question: kind for kind, questions in QUESTIONS.items() for question in questions}


def turns(records: list[dict]) -> list[dict]:
    """One item per assistant turn: the messages before it, the data's reply, and the kind of question asked (the
    corpus builder's question that the user turn before it ends with; "other" for none)."""
    items = []
    for number, record in enumerate(records):
        messages = record["messages"]
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                asked = messages[index - 1]["content"] if index else ""
                question = next((q for q in QUESTION_KINDS if asked == q or asked.endswith(" " + q)), None)
                items.append(
                    {
                        "conversation": number,
                        "turn": index,
                        "kind": QUESTION_KINDS.get(question, "other"),
                        "messages": messages[:index],
                        "expected": message["content"],
                    }
                )
    return items


def scores(items: list[dict]) -> dict:
    """Replies, exact-match share and mean token F1 of scored items, overall and per kind of question."""

    def summary(group: list[dict]) -> dict:
        return {
            "replies": len(group),
            "exact_match": sum(item["exact"] for item in group) / len(group),
            "token_f1": sum(item["f1"] for item in group) / len(group),
        }

    kinds = sorted({item["kind"] for item in items})
    return {**summary(items), "by_kind": {kind: summary([i for i in items if i["kind"] == kind]) for kind in kinds}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sampling_arguments(parser)
    parser.add_argument("--data", default="data/stdlib_chat/validation.jsonl.zst", help="conversations to score")
    parser.add_argument("--max_conversations", type=int, default=None, help="score only the first N conversations")
    parser.add_argument("--batch_size", type=int, default=32, help="turns sampled together")
    parser.add_argument("--output", required=True, help="a .jsonl file for the replies; the scores go to .json")
    # what diff-generate's checks read: chat prompts, one sample each
    parser.set_defaults(chat=True, samples=1)
    args = parser.parse_args(argv)
    check_output_path(parser, "--output", args.output)
    if not args.output.endswith(".jsonl"):
        parser.error("--output must end in .jsonl (the scores go beside it, in .json).")
    model, tokenizer, diffusion_config = load_from_arguments(parser, args)
    template, end_of_turn = chat_template_of(parser, tokenizer)
    stop = stop_ids(diffusion_config, tokenizer, (end_of_turn,))
    items = turns(list(read_jsonl(args.data))[: args.max_conversations])
    for item in items:
        item["ids"] = chat_prompt_ids(tokenizer, template, item["messages"])
    limit = context_length(model)
    fitting = [item for item in items if limit is None or len(item["ids"]) + args.gen_length <= limit]
    by_length = sorted(fitting, key=lambda item: len(item["ids"]))  # similar lengths together: less left padding
    config = checked_sampler_config(
        parser, args, diffusion_config, [item["ids"] for item in fitting], model, tokenizer, (), (end_of_turn,)
    )
    if config is None:
        parser.error(f"{args.model} is a causal checkpoint; this scores the replies of a diffusion chat model.")
    generator = torch.Generator(device=model.device).manual_seed(args.seed) if args.seed is not None else None
    for first in tqdm(range(0, len(by_length), args.batch_size), desc="batches of turns"):
        batch = by_length[first : first + args.batch_size]
        generated = run_sampler(model, [item["ids"] for item in batch], config, generator=generator).generated
        for item, ids in zip(batch, generated.tolist()):
            item["reply"] = completion_text(tokenizer, ids, stop).strip()
            item["exact"] = item["reply"] == item["expected"].strip()
            item["f1"] = token_f1(item["reply"], item["expected"])
    result = {**scores(fitting), "left_out": len(items) - len(fitting), "model": args.model, "data": args.data}
    keys = ("conversation", "turn", "kind", "expected", "reply", "exact", "f1")
    write_jsonl([{key: item[key] for key in keys} for item in fitting], args.output)
    with open(args.output.removesuffix(".jsonl") + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    rows = [
        [kind, group["replies"], f"{100 * group['exact_match']:.1f}%", f"{100 * group['token_f1']:.1f}%"]
        for kind, group in [*result["by_kind"].items(), ("all", result)]
    ]
    print(f"{os.path.basename(args.model)} on {args.data}: {result['left_out']} turns left out (too long)")
    print(markdown_table(["question", "replies", "exact match", "token F1"], rows))


if __name__ == "__main__":
    main()
