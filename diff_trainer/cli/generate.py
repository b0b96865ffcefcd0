"""`diff-generate`: sample completions from a checkpoint directory.

A diffusion checkpoint (its config holds `diffusion_config`) is sampled with the settings that
`sampling.settings.sampler_for` reads from it (mask token id, shift flag, stop ids, forbidden special tokens).
A SEDD checkpoint (objective sedd_absorb / sedd_uniform, or a
directory in the louaaron/sedd-small layout) is sampled with SEDD's samplers (`--sedd_sampler euler|analytic`),
which a masked-diffusion checkpoint may use too (read as a SEDD model through RADD). A plain causal checkpoint is
sampled with `model.generate`, so baselines use the same command; the diffusion-only flags are refused for it.

    diff-generate --model out/checkpoint-1000 --prompt "12+7=<DFF>" --gen_length 8 --steps 8
    diff-generate --model out --prompt_file prompts.jsonl --samples 4 --temperature 0.8 --output samples.jsonl
    diff-generate --model outputs/shakespeare --samples 4 --gen_length 128 --steps 128 --sedd_sampler analytic
    diff-generate --model outputs/fortunes --prompt "The " --suffix " of life." --gen_length 32   # infilling
    diff-generate --model outputs/chat_demo --chat --prompt 'What does `os.getcwd` do?'          # one chat turn

Prompts are tokenised like the training data: no special tokens, BOS prepended when the tokenizer has one
distinct from EOS. A completion ends at its first EOS. `--output` ending in .jsonl writes one record per
completion with the settings, its NFE (the forward passes it took part in: rows of a batch advance on their own) and
its batch's forward passes; any other name writes plain text, one completion per line (newlines inside a completion
written as \\n). `--cache prefix|dual` reuses keys/values within a block (Fast-dLLM; an approximation).
With `--chat` each prompt is a user message (after a `--system` one) rendered with the checkpoint tokenizer's chat
template and its generation prompt, as in training on conversations; the completion also ends at the template's
end-of-turn token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

import torch

from diff_trainer.data.chat import end_of_turn_token, render, resolve_template
from diff_trainer.data.loading import DataError, numbered_lines, parse_record, value_problem
from diff_trainer.data.pipeline import bos_prefix
from diff_trainer.devices import (
    DEVICE_CHOICES_HELP,
    DTYPE_CHOICES,
    checkpoint_dtype,
    resolve_device,
    resolve_dtype,
)
from diff_trainer.diffusion_config import read_diffusion_config
from diff_trainer.models.loading import load_checkpoint
from diff_trainer.sampling.masked import (
    CACHE_MODES,
    CONFIDENCE_STRATEGIES,
    EOS_HANDLING,
    check_cache_support,
    context_length,
    special_token_ids_to_forbid,
)
from diff_trainer.sampling.render import TokenPieces, render_text
from diff_trainer.sampling.sedd import SEDD_PREDICTORS
from diff_trainer.sampling.settings import run_sampler, sampler_for, sampler_kind, stop_ids

DEFAULT_DFF_TOKEN = "<DFF>"
# Flags that only mean something for a diffusion checkpoint (their defaults are None so use can be detected).
DIFFUSION_ONLY_FLAGS = (
    "steps",
    "block_length",
    "remasking",
    "guidance_scale",
    "threshold",
    "eos_handling",
    "cache",
    "sedd_sampler",
    "suffix",
)
# Flags of the masked-diffusion sampler that SEDD's samplers have no use for.
MASKED_SAMPLER_FLAGS = ("block_length", "remasking", "guidance_scale", "threshold", "eos_handling", "cache")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number.") from None


def temperature_value(text: str) -> float:
    """--temperature: a finite number >= 0 (argparse type)."""
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a temperature: give a finite number >= 0 (0 = greedy).")
    return value


def threshold_value(text: str) -> float:
    """--threshold: a confidence in (0, 1] (argparse type)."""
    value = _number(text)
    if not 0 < value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text} is not a confidence threshold: give a number in (0, 1].")
    return value


def check_output_path(parser: argparse.ArgumentParser, flag: str, path: str | None) -> None:
    """Refuse an output file (`flag` given `path`) that is a directory or whose directory does not exist."""
    if path is None:
        return
    if os.path.isdir(path):
        parser.error(f"{flag} {path} is a directory; give the name of a file to write.")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        parser.error(f"{flag} {path}: its directory does not exist; create it first.")


def add_sampling_arguments(parser: argparse.ArgumentParser, with_model: bool = True) -> None:
    """Flags shared by diff-generate, diff-view and (without --model) diff-generate-cascade."""
    if with_model:
        parser.add_argument("--model", required=True, help="checkpoint directory (model, config and tokenizer)")
    parser.add_argument("--gen_length", type=int, default=64, help="number of tokens to generate")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps in total (default: gen_length)")
    parser.add_argument(
        "--block_length", type=int, default=None, help="semi-autoregressive block size (default: gen_length)"
    )
    parser.add_argument("--temperature", type=temperature_value, default=0.0, help="0 = greedy")
    parser.add_argument(
        "--remasking",
        choices=sorted(CONFIDENCE_STRATEGIES),
        default=None,
        help="which predictions are committed first (default: low_confidence)",
    )
    parser.add_argument("--guidance_scale", type=float, default=None, help="classifier-free guidance w (default 0)")
    parser.add_argument(
        "--threshold",
        type=threshold_value,
        default=None,
        help="Fast-dLLM: commit every prediction at least this confident (ignores --steps)",
    )
    parser.add_argument(
        "--eos_handling",
        choices=EOS_HANDLING,
        default=None,
        help="stop after a block with EOS (default), forbid EOS, rank it last, or none",
    )
    parser.add_argument(
        "--cache",
        choices=CACHE_MODES,
        default=None,
        help="Fast-dLLM key/value cache (approximate): none (default), prefix (prompt and finished "
        "blocks computed once per block) or dual (also the masked positions after the block); "
        "bidirectional Llama / Qwen2 checkpoints",
    )
    parser.add_argument(
        "--sedd_sampler",
        choices=sorted(SEDD_PREDICTORS),
        default=None,
        help="SEDD tau-leaping step (default euler for SEDD checkpoints); on a masked-diffusion "
        "checkpoint it samples the model as an absorbing SEDD model (RADD)",
    )
    parser.add_argument(
        "--suffix", default=None, help="text that follows the generated tokens, kept fixed at every step (infilling)"
    )
    parser.add_argument(
        "--tokenizer_name",
        default=None,
        help="tokenizer for a SEDD-layout checkpoint that ships none (louaaron/sedd-small: gpt2)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="repeat the same output (for the same device, dtype and batch size)"
    )
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="weights and activations; auto: the checkpoint's dtype on a GPU, float32 on the CPU",
    )
    parser.add_argument(
        "--append_dff",
        action="store_true",
        help="append the checkpoint's <DFF> token to each prompt (SFT / diff models)",
    )
    parser.add_argument(
        "--merge_lora",
        action="store_true",
        help="for an adapter-only LoRA checkpoint: merge the adapters into the base weights",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-generate", description=__doc__.split("\n\n")[0])
    add_sampling_arguments(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", action="append", help="a prompt (repeat the flag for several)")
    source.add_argument("--prompt_file", help="prompts, one per line, or .jsonl with a 'prompt' field")
    parser.add_argument(
        "--samples",
        type=int,
        default=1,
        help="completions per prompt (without a prompt: unconditional samples, SEDD samplers only)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="sequences sampled together")
    parser.add_argument("--output", help="write completions to this .jsonl or .txt file")
    parser.add_argument("--verbose", action="store_true", help="print every intermediate state")
    parser.add_argument(
        "--chat",
        action="store_true",
        help="each prompt is a user message, rendered with the checkpoint's chat template; the "
        "completion ends at the template's end of turn",
    )
    parser.add_argument("--system", help="with --chat: a system message before each prompt")
    return parser


def open_checkpoint(
    path: str, *, device: str = "cpu", dtype: str = "auto", merge_lora: bool = False, tokenizer_name: str | None = None
):
    """(model in eval mode, tokenizer, diffusion_config dict or None) of a checkpoint (models.loading.load_checkpoint).

    `tokenizer_name` serves a layout that ships no tokenizer of its own (the SEDD authors').
    """
    try:
        model, tokenizer = load_checkpoint(
            path, device=device, dtype=dtype, merge_lora=merge_lora, tokenizer_name=tokenizer_name
        )
    except (FileNotFoundError, DataError) as error:
        raise SystemExit(f"error: {error}") from None
    return model, tokenizer, read_diffusion_config(model.config)


def load_from_arguments(parser: argparse.ArgumentParser, args):
    """The checkpoint of --model on --device in --dtype; a wrong device or dtype ends with a usage error."""
    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device, checkpoint_dtype(args.model))
    except ValueError as error:
        parser.error(str(error))
    return open_checkpoint(
        args.model,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        merge_lora=args.merge_lora,
        tokenizer_name=getattr(args, "tokenizer_name", None),
    )


def read_prompts(path: str) -> list[str]:
    """Prompts from a text file (one per line, blank lines skipped) or a .jsonl file with a 'prompt' field; a
    DataError naming the file (and line) when it is missing, not UTF-8, malformed or a record has no text prompt."""
    if not os.path.isfile(path):
        raise DataError(f"--prompt_file {path}: no such file.")
    lines = [(number, line.removesuffix("\r")) for number, line in numbered_lines(path) if line.strip()]
    if not path.endswith(".jsonl"):
        return [line for _, line in lines]
    prompts = []
    for number, line in lines:
        record = parse_record(line, f"{path}, line {number}")
        problem = value_problem(record, "prompt")
        if problem:
            raise DataError(f"{path}, line {number}: {problem}. Each line needs a JSON string under 'prompt'.")
        prompts.append(record["prompt"])
    return prompts


def encode_suffix(tokenizer, suffix: str | None) -> list[int]:
    """The ids of --suffix (no special tokens); none without one."""
    return tokenizer.encode(suffix, add_special_tokens=False) if suffix else []


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids as in training: no special tokens, `bos_prefix` first."""
    bos = bos_prefix(tokenizer)
    return [bos + tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]


def sampler_flags(args) -> dict:
    """The sampler settings given on the command line, for `sampler_for` (None: not given)."""
    return {
        "predictor": args.sedd_sampler,
        "gen_length": args.gen_length,
        "steps": args.steps,
        "block_length": args.block_length,
        "temperature": args.temperature,
        "remasking": args.remasking,
        "guidance_scale": args.guidance_scale,
        "threshold": args.threshold,
        "eos_handling": args.eos_handling,
        "cache": args.cache,
    }


def sampler_name(args, diffusion_config) -> str:
    """The sampler that runs: "causal" (model.generate), "diffusion" (masked), "block" or "sedd"."""
    if diffusion_config is None:
        return "causal"
    return {"masked": "diffusion"}.get(kind := sampler_kind(diffusion_config, args.sedd_sampler), kind)


def shown_mask_id(config) -> int:
    """The id drawn as a mask in traces (-1, i.e. none, for the uniform graph)."""
    return config.mask_token_id if config.mask_token_id is not None else -1


def chat_template_of(parser, tokenizer) -> tuple[str, int]:
    """The tokenizer's chat template and the id of the token it ends a turn with; a usage error without one."""
    try:
        template = resolve_template(tokenizer, None)
        return template, tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer, template))
    except DataError as error:
        parser.error(f"--chat: {error}")


def chat_prompt_ids(tokenizer, template: str, messages: list[dict]) -> list[int]:
    """The ids of `messages` rendered with the template and the opening of the assistant's reply (the template
    writes any BOS itself)."""
    return tokenizer.encode(render(tokenizer, template, messages, generation_prompt=True), add_special_tokens=False)


def prepare_prompts(args, tokenizer, diffusion_config, prompts: list[str], template: str | None = None):
    """Prompt ids: with <DFF> appended when asked, or as user messages rendered with the chat `template`."""
    if template is not None:
        system = [{"role": "system", "content": args.system}] if args.system else []
        return [
            chat_prompt_ids(tokenizer, template, system + [{"role": "user", "content": prompt}]) for prompt in prompts
        ]
    if args.append_dff:
        dff = (diffusion_config or {}).get("dff_token") or DEFAULT_DFF_TOKEN
        prompts = [prompt if prompt.endswith(dff) else prompt + dff for prompt in prompts]
    return encode_prompts(tokenizer, prompts)


def completion_text(tokenizer, ids: list[int], stop=None) -> str:
    """Decode generated ids up to the first stop id (`stop`: one id or several; default the EOS)."""
    stop = tokenizer.eos_token_id if stop is None else stop
    stop = {stop} if isinstance(stop, int) else set(stop)
    end = next((i for i, token in enumerate(ids) if token in stop), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=True)


def generate_causal(
    model, tokenizer, prompt_ids: list[list[int]], args, cache_implementation: str | None = None, stop=None
) -> tuple[list[list[int]], int]:
    """Baseline: left-padded `model.generate`; returns the new ids per row and the number of forward passes.

    `cache_implementation`: transformers' name of the key/value cache (None: its default dynamic cache; "static":
    preallocated, which transformers compiles on GPUs). `stop`: the ids that end a completion (default the EOS)."""
    stop = tokenizer.eos_token_id if stop is None else stop
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=model.device)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    sampling = (
        {"do_sample": True, "temperature": args.temperature, "top_k": 0, "top_p": 1.0}
        if args.temperature > 0
        else {"do_sample": False}
    )
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=args.gen_length,
            pad_token_id=pad,
            eos_token_id=list(stop) if isinstance(stop, tuple) else stop,
            suppress_tokens=list(special_token_ids_to_forbid(tokenizer, stop)),
            cache_implementation=cache_implementation,
            **sampling,
        )
    new_ids = output[:, width:]
    return new_ids.tolist(), new_ids.shape[1]


def check_arguments(parser, args, diffusion_config, prompt_ids, model, suffix_ids=()) -> None:
    """Refuse flags that do not fit the checkpoint and prompts (with the suffix) that do not fit the model."""
    if diffusion_config is None:
        given = [f"--{name}" for name in DIFFUSION_ONLY_FLAGS if getattr(args, name) is not None]
        if given:
            parser.error(
                f"{args.model} is a causal checkpoint (no diffusion_config); "
                f"{', '.join(given)} only apply to diffusion checkpoints."
            )
    if sampler_name(args, diffusion_config) == "sedd":
        given = [f"--{name}" for name in MASKED_SAMPLER_FLAGS if getattr(args, name) is not None]
        if args.temperature > 0:
            given.append("--temperature")
        if given:
            parser.error(
                f"{', '.join(given)} belong to the masked-diffusion sampler; SEDD's samplers take "
                "--steps and --sedd_sampler."
            )
    chat = getattr(args, "chat", False)  # a flag of diff-generate only
    if getattr(args, "system", None) is not None and not chat:
        parser.error("--system is a message of a chat: add --chat.")
    if chat and args.append_dff:
        parser.error("--chat renders prompts with the chat template; drop --append_dff.")
    if args.samples < 1 or args.batch_size < 1 or args.gen_length < 1:
        parser.error("--samples, --batch_size and --gen_length must be at least 1.")
    limit = context_length(model)
    longest = max(len(p) for p in prompt_ids)
    if limit is not None and longest + args.gen_length + len(suffix_ids) > limit:
        suffix = f" + --suffix ({len(suffix_ids)} tokens)" if suffix_ids else ""
        parser.error(
            f"the longest prompt ({longest} tokens) + --gen_length ({args.gen_length}){suffix} exceeds the "
            f"model's context of {limit} positions."
        )


def _print_step(tokenizer, mask_token_id: int, offset: int):
    """An on_step hook printing every row of every intermediate state (rows numbered from `offset`)."""
    pieces = TokenPieces(tokenizer)
    color = sys.stdout.isatty()

    def hook(frame):
        for row in range(frame.sequences.shape[0]):
            text = render_text(frame, row, pieces, mask_token_id, color=color)
            print(f"[sequence {offset + row}] {text}", flush=True)

    return hook


def checked_sampler_config(
    parser, args, diffusion_config, prompt_ids, model, tokenizer, suffix_ids=(), extra_stop_ids=()
):
    """Check the flags and prompts against the checkpoint; the SamplerConfig (None for a causal checkpoint)."""
    check_arguments(parser, args, diffusion_config, prompt_ids, model, suffix_ids)
    if diffusion_config is None:
        return None
    try:
        config = sampler_for(model, tokenizer, extra_stop_ids=extra_stop_ids, **sampler_flags(args))
        check_cache_support(model, getattr(config, "cache", "none"))
        return config
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_output_path(parser, "--output", args.output)
    try:
        prompts = read_prompts(args.prompt_file) if args.prompt_file is not None else args.prompt
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    if prompts is not None and not prompts:
        parser.error("no prompts given.")
    model, tokenizer, diffusion_config = load_from_arguments(parser, args)
    if prompts is None:
        if sampler_name(args, diffusion_config) != "sedd":
            parser.error("give --prompt or --prompt_file (unconditional --samples needs a SEDD sampler).")
        prompts = [""]
    template, end_of_turn = chat_template_of(parser, tokenizer) if args.chat else (None, None)
    end_of_turn = (end_of_turn,) if args.chat else ()
    prompt_ids = prepare_prompts(args, tokenizer, diffusion_config, prompts, template)
    suffix_ids = encode_suffix(tokenizer, args.suffix)
    config = checked_sampler_config(
        parser, args, diffusion_config, prompt_ids, model, tokenizer, suffix_ids, end_of_turn
    )

    stop = stop_ids(diffusion_config, tokenizer, end_of_turn)
    jobs = [(p, s) for p in range(len(prompts)) for s in range(args.samples)]
    generator = torch.Generator(device=model.device).manual_seed(args.seed) if args.seed is not None else None
    records = []
    for first in range(0, len(jobs), args.batch_size):
        batch = jobs[first : first + args.batch_size]
        batch_ids = [prompt_ids[p] for p, _ in batch]
        if config is None:
            new_ids, forwards = generate_causal(model, tokenizer, batch_ids, args, stop=stop)
            row_nfe = [forwards] * len(new_ids)
        else:
            hook = _print_step(tokenizer, shown_mask_id(config), first) if args.verbose else None
            result = run_sampler(model, batch_ids, config, suffix_ids, generator=generator, on_step=hook)
            new_ids, forwards, row_nfe = result.generated.tolist(), result.nfe, result.row_nfe
        for (p, s), ids, nfe in zip(batch, new_ids, row_nfe):
            records.append(
                {
                    "prompt": prompts[p],
                    "sample": s,
                    "completion": completion_text(tokenizer, ids, stop),
                    "nfe": nfe,
                    "batch_forwards": forwards,
                }
            )

    settings = {
        "model": args.model,
        "seed": args.seed,
        "append_dff": args.append_dff,
        "suffix": args.suffix,
        "sampler": sampler_name(args, diffusion_config),
        "chat": args.chat,
        "system": args.system,
    }
    settings.update(
        dataclasses.asdict(config)
        if config is not None
        else {"gen_length": args.gen_length, "temperature": args.temperature}
    )
    for (p, s), record in zip(jobs, records):
        sample = f", sample {s + 1}/{args.samples}" if args.samples > 1 else ""
        print(f"--- prompt {p + 1}/{len(prompts)}{sample}: {tokenizer.decode(prompt_ids[p])}")
        print(record["completion"])
    if args.output:
        write_records(args.output, records, settings)
        print(f"Wrote {len(records)} completions to {args.output}")


def write_records(path: str, records: list[dict], settings: dict) -> None:
    """.jsonl: one record per completion with the settings; otherwise one completion per line."""
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            if path.endswith(".jsonl"):
                handle.write(json.dumps({**record, "settings": settings}, ensure_ascii=False) + "\n")
            else:
                handle.write(record["completion"].replace("\n", "\\n") + "\n")


if __name__ == "__main__":
    main()
