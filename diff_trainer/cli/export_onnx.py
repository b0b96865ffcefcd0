"""`diff-export-onnx`: export a masked-diffusion checkpoint for the browser page, and check the export.

    diff-export-onnx --model outputs/browser_demo --output web/model --prompt "You will" --gen_length 48
    diff-export-onnx --model outputs/browser_demo --output outputs/demo_int8 --quantize int8

Writes into `--output` a `model.onnx` (the denoiser: input_ids [batch, sequence] and attention_mask -> logits
[batch, sequence, vocabulary], both axes dynamic, position ids computed from the mask as the Python sampler does)
and a `model.json` with everything the page needs: the tokenizer table (byte-level or byte-level BPE vocabularies,
the kinds web/js/tokenizer.js encodes exactly as Python does), the special ids, the objective and the
page's default sampler settings (the sampling flags of diff-generate). The export is verified before it is kept:
onnxruntime's logits are compared with PyTorch's on random inputs (one row left padded); the largest absolute
difference is printed and must stay within 1e-4 for float32, or, with `--quantize int8` (onnxruntime's dynamic
int8 quantization of the weight matrices and the embedding table), within 10% of the largest absolute PyTorch logit.
A failed export leaves no files behind; a new export replaces only those two files, never other files in --output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from diff_trainer.cli.generate import add_sampling_arguments, open_checkpoint, sampler_flags
from diff_trainer.data.pipeline import bos_prefix
from diff_trainer.diffusion_config import MASKED
from diff_trainer.objectives import objective_for
from diff_trainer.sampling.masked import context_length, padded_position_ids
from diff_trainer.sampling.render import TokenPieces
from diff_trainer.sampling.settings import sampler_for

MODEL_FILE = "model.onnx"
CONFIG_FILE = "model.json"
FORMAT_VERSION = 1
# torch.onnx's dynamo exporter writes opset 18 and newer (older opsets need its removed TorchScript path).
MIN_OPSET = 18
DEFAULT_OPSET = 18
FLOAT32_RELATIVE_BOUND = 1e-4  # float32: largest difference accepted, as a share of max(1, largest |torch logit|)
INT8_RELATIVE_BOUND = 0.1  # int8: the same share, larger for the rounded weights
VERIFY_SEED = 0
# GPT-2's pre-tokenizer split (`tokenizers` ByteLevel, use_regex) for JavaScript's RegExp ("gu"): \s written as
# \p{White_Space}, which is Oniguruma's Unicode \s (JavaScript's \s adds U+FEFF and lacks U+0085).
BYTE_LEVEL_SPLIT = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+"
    r"|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+"
)


class LogitsOnly(torch.nn.Module):
    """The denoiser as the page calls it: (input_ids, attention_mask) -> logits, positions from the mask."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = padded_position_ids(attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-export-onnx", description=__doc__.split("\n\n")[0])
    add_sampling_arguments(parser)  # --model, --merge_lora, and the page's default sampler settings
    parser.add_argument("--output", required=True, help="directory to write model.onnx and model.json into")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (at least {MIN_OPSET})")
    parser.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="int8: dynamic int8 weights (about 4x smaller, logits within a looser bound)",
    )
    parser.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="longest prompt + generation the export accepts (default: the model's context)",
    )
    parser.add_argument("--prompt", default="", help="the prompt the page shows first")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing export in --output (its {MODEL_FILE} and {CONFIG_FILE} only)",
    )
    return parser


def tokenizer_table(tokenizer, vocab_size: int) -> dict:
    """The page's tokenizer data: kind "byte" (ByT5) or "bpe" (byte-level BPE, GPT-2's scheme); any other
    tokenizer is refused with the reason."""
    from transformers import ByT5Tokenizer

    check_every_id_has_text(tokenizer, vocab_size)
    pieces = TokenPieces(tokenizer)
    added = [
        {"id": int(i), "content": t.content, "lstrip": bool(t.lstrip), "rstrip": bool(t.rstrip)}
        for i, t in sorted(tokenizer.added_tokens_decoder.items())
    ]
    shared = {"added_tokens": added, "pieces": [pieces(i) for i in range(vocab_size)]}
    if isinstance(tokenizer, ByT5Tokenizer):
        return {"kind": "byte", "byte_offset": int(tokenizer.offset), **shared}
    state, reason = byte_level_bpe_state(tokenizer)
    if reason is not None:
        raise ValueError(
            f"the page's tokenizer code encodes byte-level vocabularies (ByT5Tokenizer, --tokenizer_name byte) and "
            f"byte-level BPE (GPT-2's scheme, as data_scripts/train_tokenizer.py makes); this checkpoint has a "
            f"{type(tokenizer).__name__} with {len(tokenizer)} ids, {reason}. Train the model with one of those "
            "tokenizers to run it in the browser."
        )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    model = state["model"]
    return {
        "kind": "bpe",
        "vocab": model["vocab"],
        "merges": [bpe_pair(m) for m in model["merges"]],
        "ignore_merges": bool(model.get("ignore_merges")),
        "pattern": BYTE_LEVEL_SPLIT,
        "byte_chars": "".join(byte_chars[b] for b in range(256)),
        **shared,
    }


def check_every_id_has_text(tokenizer, vocab_size: int) -> None:
    """A ValueError when the model predicts ids the tokenizer has no text for (ByT5Tokenizer fails inside decode)."""
    if vocab_size > len(tokenizer):
        raise ValueError(
            f"the model predicts {vocab_size} ids but its {type(tokenizer).__name__} has text for {len(tokenizer)} "
            f"(ids {len(tokenizer)} to {vocab_size - 1} have none), so the page could not show what it samples. "
            "Train with a tokenizer covering the model's vocabulary (resize the embeddings to len(tokenizer))."
        )


def byte_level_bpe_state(tokenizer) -> tuple[dict | None, str | None]:
    """(the `tokenizers` state of `tokenizer`, None) when it is a byte-level BPE the page encodes exactly as
    `tokenizers` does, else (None, why not)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None, "which has no `tokenizers` backend"
    state = json.loads(backend.to_str())
    model, pre_tokenizer, decoder = state["model"], state.get("pre_tokenizer") or {}, state.get("decoder") or {}
    subword_options = [
        name
        for name in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")
        if model.get(name)
    ]
    if model["type"] != "BPE":
        return None, f"a {model['type']} model (not BPE)"
    if subword_options:
        return None, f"a BPE with {', '.join(subword_options)} set"
    if state.get("normalizer"):
        return None, f"a {state['normalizer']['type']} normalizer"
    if pre_tokenizer.get("type") != "ByteLevel" or not pre_tokenizer.get("use_regex", True):
        return None, f"a {pre_tokenizer.get('type')} pre-tokenizer (not ByteLevel with its regex split)"
    if pre_tokenizer.get("add_prefix_space"):
        return None, "a ByteLevel pre-tokenizer with add_prefix_space"
    if decoder.get("type") != "ByteLevel":
        return None, f"a {decoder.get('type')} decoder (not ByteLevel)"
    if any(token.get("single_word") for token in state["added_tokens"]):
        return None, "added tokens matched as single words"
    return state, None


def bpe_pair(merge) -> list[str]:
    """One merge as [left, right]: tokenizer.json writes "left right" (older files) or a pair."""
    return merge.split(" ", 1) if isinstance(merge, str) else list(merge)


def export_graph(model, path: Path, opset: int, max_length: int) -> None:
    """torch.onnx.export (dynamo) of the denoiser with dynamic batch and sequence axes, weights in one file."""
    from torch.export import Dim

    batch, sequence = Dim("batch", min=1, max=1024), Dim("sequence", min=1, max=max_length)
    length = min(max_length, 16)
    example = (torch.full((2, length), 3, dtype=torch.long), torch.ones(2, length, dtype=torch.long))
    torch.onnx.export(
        LogitsOnly(model).eval(),
        example,
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
    )


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic quantization: int8 matrices and embedding table, MatMul inputs quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"])


def verification_inputs(vocab_size: int, max_length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random ids: one short row, and two rows of the longest length with the first left padded by a third."""
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    short = torch.randint(0, vocab_size, (1, min(7, max_length)), generator=generator)
    long = torch.randint(0, vocab_size, (2, max_length), generator=generator)
    long_mask = torch.ones_like(long)
    long_mask[0, : max_length // 3] = 0
    return [(short, torch.ones_like(short)), (long, long_mask)]


@torch.no_grad()
def largest_differences(model, onnx_path: Path, vocab_size: int, max_length: int) -> tuple[float, float]:
    """(max |onnxruntime − torch| over attended positions, max |torch logit|) on the verification inputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wrapped = LogitsOnly(model).eval()
    difference = scale = 0.0
    for input_ids, attention_mask in verification_inputs(vocab_size, max_length):
        expected = wrapped(input_ids, attention_mask)
        (actual,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        attended = attention_mask.bool()
        gap = (torch.from_numpy(actual) - expected).abs()[attended]
        difference = max(difference, float(gap.max()))
        scale = max(scale, float(expected[attended].abs().max()))
    return difference, scale


def page_config(args, model, tokenizer, diffusion_config: dict, settings, max_length: int) -> dict:
    """model.json: what the page needs to tokenize, run and sample the exported model."""
    vocab_size = model.get_output_embeddings().weight.shape[0]
    # token ids go under "tokens"; the page has no key/value cache (--cache other than none is refused)
    left_out = ("mask_token_id", "shift", "eos_token_id", "pad_token_id", "forbidden_token_ids", "cache")
    sampler = {name: value for name, value in dataclasses.asdict(settings).items() if name not in left_out}
    dff = diffusion_config.get("dff_token")
    return {
        "format": FORMAT_VERSION,
        "model_file": MODEL_FILE,
        "objective": diffusion_config["objective"],
        "model_type": model.config.model_type,
        "max_length": max_length,
        "quantization": args.quantize,
        "tokens": {
            "vocab_size": int(vocab_size),
            "mask": int(diffusion_config["mask_token_id"]),
            "eos": tokenizer.eos_token_id,
            "pad": tokenizer.pad_token_id,
            "bos": (bos_prefix(tokenizer) or [None])[0],
            "dff": tokenizer.convert_tokens_to_ids(dff) if dff in tokenizer.get_vocab() else None,
            "forbidden_ids": list(settings.forbidden_token_ids),
            "shift": bool(diffusion_config.get("shift_logits", False)),
        },
        "tokenizer": tokenizer_table(tokenizer, vocab_size),
        "prompt": {"text": args.prompt, "append_dff": bool(args.append_dff), "dff_token": dff},
        "sampler": {**sampler, "seed": args.seed if args.seed is not None else 0},
    }


def checked_inputs(parser, args):
    """Load the checkpoint and refuse what the page cannot run; (model, tokenizer, diffusion_config, settings)."""
    import onnx

    newest_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= args.opset <= newest_opset:
        parser.error(
            f"--opset {args.opset}: the exporter writes opsets {MIN_OPSET} to {newest_opset} "
            f"(installed onnx {onnx.__version__})."
        )
    if args.device not in ("auto", "cpu") or args.dtype not in ("auto", "float32"):
        parser.error(
            f"--device {args.device} --dtype {args.dtype}: the export is made and checked in float32 on "
            "the CPU (use --quantize int8 for a smaller file)."
        )
    if args.sedd_sampler is not None:
        parser.error("--sedd_sampler: the page runs the masked-diffusion sampler only; drop --sedd_sampler.")
    if args.cache not in (None, "none"):
        parser.error(f"--cache {args.cache}: the page samples without a key/value cache; drop --cache.")
    model, tokenizer, diffusion_config = open_checkpoint(
        args.model, device="cpu", dtype="float32", merge_lora=args.merge_lora
    )
    if diffusion_config is None:
        parser.error(
            f"{args.model} is not a diffusion model (its config.json has no diffusion_config): the page "
            "samples masked-diffusion checkpoints, trained with run_clm_diff.py --train_diff_model."
        )
    if objective_for(diffusion_config).sampler != "masked":
        parser.error(
            f"{args.model} has objective {diffusion_config.get('objective')!r}; the page runs "
            f"{MASKED!r} checkpoints only."
        )
    limit = context_length(model)
    args.max_length = args.max_length or limit
    if args.max_length is None or args.max_length < 2 or (limit is not None and args.max_length > limit):
        parser.error(f"--max_length {args.max_length}: give a length from 2 to the model's context ({limit}).")
    try:
        settings = sampler_for(model, tokenizer, **sampler_flags(args))
        tokenizer_table(tokenizer, 0)
        check_every_id_has_text(tokenizer, model.get_output_embeddings().weight.shape[0])
    except ValueError as error:
        parser.error(str(error))
    output = Path(args.output)
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        parser.error(
            f"{output} exists and is not empty: pass --overwrite to replace its {MODEL_FILE} and "
            f"{CONFIG_FILE} (other files there are kept)."
        )
    return model, tokenizer, diffusion_config, settings


def move_export_files(source: Path, target: Path) -> None:
    """Move the finished export's two files into `target`, leaving every other file there alone.

    model.json goes last and the old one first, so a kill in between leaves no model.json (not an export, exported
    again by diff-serve-demo) rather than a new graph beside an old description.
    """
    target.mkdir(exist_ok=True)
    (target / CONFIG_FILE).unlink(missing_ok=True)
    for name in (MODEL_FILE, CONFIG_FILE):
        (source / name).replace(target / name)


def export(args, parser) -> dict:
    """Export, verify and write the directory; return model.json's content."""
    model, tokenizer, diffusion_config, settings = checked_inputs(parser, args)
    config = page_config(args, model, tokenizer, diffusion_config, settings, args.max_length)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as scratch:
        scratch = Path(scratch)
        staged = scratch / "export"
        staged.mkdir()
        exported = scratch / "float32.onnx"
        export_graph(model, exported, args.opset, args.max_length)
        if args.quantize == "int8":
            quantize_int8(exported, staged / MODEL_FILE)
        else:
            exported.rename(staged / MODEL_FILE)
        vocab_size = config["tokens"]["vocab_size"]
        difference, scale = largest_differences(model, staged / MODEL_FILE, vocab_size, args.max_length)
        relative_bound = FLOAT32_RELATIVE_BOUND if args.quantize == "none" else INT8_RELATIVE_BOUND
        bound = relative_bound * max(1.0, scale)
        print(
            f"verification: max |onnxruntime - torch| logit difference {difference:.3g} "
            f"(bound {bound:.3g}; largest |logit| {scale:.3g})"
        )
        if not difference <= bound:
            raise SystemExit(
                f"diff-export-onnx: error: the exported model's logits differ from PyTorch's by "
                f"{difference:.3g} > {bound:.3g}; nothing was written to {output}."
            )
        config["verification"] = {"max_abs_difference": difference, "bound": bound, "max_abs_logit": scale}
        config["files"] = {MODEL_FILE: (staged / MODEL_FILE).stat().st_size}
        (staged / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        move_export_files(staged, output)
    for name in (MODEL_FILE, CONFIG_FILE):
        print(f"{output / name}: {(output / name).stat().st_size / 2**20:.2f} MiB")
    return config


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    export(parser.parse_args(argv), parser)


if __name__ == "__main__":
    main()
