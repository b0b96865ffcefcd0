"""`diff-convert`: write a LLaDA or Dream checkpoint (released layout, remote code) as a native transformers one.

    diff-convert GSAI-ML/LLaDA-8B-Instruct checkpoints/llada-8b-instruct
    diff-convert path/to/Dream-v0-Base-7B checkpoints/dream-7b --dtype bfloat16

The output is a Llama (LLaDA) or Qwen2 (Dream) checkpoint with full attention and a `diffusion_config` (mask id,
shifted logits for Dream, EOS/EOT ids), plus the tokenizer with its mask token set; it loads with
`AutoModelForCausalLM.from_pretrained(OUT)` and every command of this project, without trust_remote_code.
"""

from __future__ import annotations

import argparse
import sys

from diff_trainer.models.conversion import convert_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="LLaDA / Dream checkpoint: a local directory or a hub name")
    parser.add_argument("output_dir", help="directory to write the converted model and tokenizer to")
    parser.add_argument(
        "--dtype", default="auto", help="dtype of the written weights: auto (as stored), float32, bfloat16 or float16"
    )
    parser.add_argument("--max_shard_size", default="5GB", help="largest weight file written (e.g. 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        conversion = convert_checkpoint(
            args.checkpoint,
            args.output_dir,
            dtype=args.dtype,
            overwrite=args.overwrite,
            max_shard_size=args.max_shard_size,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        parser.error(str(error))
    print(conversion.summary())


if __name__ == "__main__":
    sys.exit(main())
