"""Train a byte-level BPE tokenizer on a corpus's training file and save it for `--tokenizer_name DIR`.

    python data_scripts/train_tokenizer.py --train_file data/fortunes/train.jsonl.zst --vocab_size 1024 \\
        --output_dir data/fortunes/bpe1024

The file can be any format run_clm_diff.py reads (.jsonl/.json/.csv/.parquet/.txt, optionally .zst/.gz/...); the
tokenizer learns from its `--text_column`. `<DFF>` and the mask token are single special ids. The directory is
written under a temporary name and renamed at the end, so a failed run leaves nothing that loads.
"""

import argparse
import os
import sys
from pathlib import Path

try:
    from diff_trainer.data.bpe_tokenizer import train_bpe_tokenizer
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.bpe_tokenizer import train_bpe_tokenizer
from diff_trainer.data.io import staged_directory
from diff_trainer.data.loading import DataError, load_files


def corpus_texts(train_file: str, text_column: str) -> list[str]:
    """The `text_column` strings of `train_file`; a record without one is an error naming it."""
    raw, problems = load_files({"train": train_file}, text_columns=[text_column])
    if text_column not in raw["train"].column_names:
        raise DataError(
            f"{train_file}: no column {text_column!r} (it has {', '.join(raw['train'].column_names)}); "
            "pass --text_column."
        )
    if problems["train"]:
        place, problem = next(iter(problems["train"].values()))
        raise DataError(f"{place}: {problem}. Fix the record or drop it before training a tokenizer.")
    return raw["train"][text_column]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", required=True, help="Corpus file to learn the vocabulary from.")
    parser.add_argument("--text_column", default="text", help="Column holding the text (default: text).")
    parser.add_argument("--vocab_size", type=int, default=1024, help="Vocabulary size, byte and special ids included.")
    parser.add_argument("--min_frequency", type=int, default=2, help="Least count of a pair to be merged.")
    parser.add_argument("--dff_token", default="<DFF>", help="Context/target marker kept as one id.")
    parser.add_argument("--mask_token", default="<|mdm_mask|>", help="Diffusion mask token kept as one id.")
    parser.add_argument("--output_dir", required=True, help="Directory to save the tokenizer in (must not exist).")
    args = parser.parse_args(argv)
    if os.path.exists(args.output_dir):
        parser.error(f"--output_dir {args.output_dir} exists; remove it or choose another directory.")
    try:
        tokenizer = train_bpe_tokenizer(
            corpus_texts(args.train_file, args.text_column),
            args.vocab_size,
            dff_token=args.dff_token,
            mask_token=args.mask_token,
            min_frequency=args.min_frequency,
        )
    except DataError as error:  # the data: one line, exit status 1
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    except ValueError as error:  # a flag (--vocab_size): a usage error
        parser.error(str(error))
    with staged_directory(args.output_dir) as staging:
        tokenizer.save_pretrained(staging)
    print(f"saved a {len(tokenizer)}-id byte-level BPE to {args.output_dir}")


if __name__ == "__main__":
    main()
