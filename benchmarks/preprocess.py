#!/usr/bin/env python
"""Preprocessing throughput: raw tokenisation vs. diff-trainer's Preprocessor vs. run_clm's recipe.

    python benchmarks/preprocess.py [--num_workers 2] [--block_size 1024] [--repeats 5]
    python benchmarks/preprocess.py --quick      # 4 MB of text, 3 rounds

The tables also go to benchmarks/results/preprocess[_quick].md.

The text is this interpreter's own standard library (.py sources, site-packages excluded), cut into records of
about --record_chars characters at top-level `def`/`class` lines, with `<DFF>` inserted before each record's first
`def` (at its start when it has none). A byte-level BPE is trained on a slice of it in about a second. Every
variant runs with the same worker count and with datasets' caching disabled, so each timing does the real work;
the variants are interleaved over --repeats rounds; the median and best wall times and the median CPU time
(workers included) are reported.
"""

import argparse
import json
import logging
import os
import re
import sysconfig
import tempfile
import time
from itertools import chain

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are the parallelism, equal for every variant

import datasets  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from datasets import DatasetDict  # noqa: E402

from common import load_average, machine_summary, markdown_table, median, results_file, stopwatch  # noqa: E402
from diff_trainer.data import pipeline  # noqa: E402
from diff_trainer.data.bpe_tokenizer import train_bpe_tokenizer  # noqa: E402
from diff_trainer.data.pipeline import Preprocessor  # noqa: E402
from diff_trainer.training.args.data import DataArguments  # noqa: E402

DFF = "<DFF>"
TOP_LEVEL_BLOCK = re.compile(r"^(?=(?:async\s+def|def|class|@)\b)", re.MULTILINE)
FIRST_DEF = re.compile(r"^[ \t]*(?:async\s+)?def\b", re.MULTILINE)


def stdlib_sources():
    """Paths of the standard library's .py files, in a stable order."""
    root = sysconfig.get_paths()["stdlib"]
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(
            d for d in subdirectories if d not in ("site-packages", "dist-packages", "__pycache__")
        )
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def split_source(text: str, record_chars: int) -> list[str]:
    """Cut a file at top-level definitions and join neighbouring pieces up to about `record_chars` characters."""
    records, current = [], ""
    for piece in TOP_LEVEL_BLOCK.split(text):
        if current and len(current) + len(piece) > record_chars:
            records.append(current)
            current = ""
        current += piece
    if current.strip():
        records.append(current)
    return records


def with_marker(record: str) -> str:
    """Insert <DFF> before the record's first `def` (or at its start): the code before it is context."""
    match = FIRST_DEF.search(record)
    at = match.start() if match else 0
    return record[:at] + DFF + record[at:]


def write_corpus(path: str, record_chars: int, max_mb: float) -> tuple[int, int]:
    """Write the records as JSON lines; return (records, UTF-8 bytes of text)."""
    count, size = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        for source in stdlib_sources():
            with open(source, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
            for record in split_source(text, record_chars):
                record = with_marker(record)
                out.write(json.dumps({"text": record}) + "\n")
                count += 1
                size += len(record.encode("utf-8", errors="replace"))
            if max_mb and size >= max_mb * 1e6:
                break
    return count, size


def raw_tokenisation(raw, tokenizer, workers: int, block_size: int):
    """(a) Batched tokenisation only: the ids our pipeline's first step also computes."""

    def tokenize(batch):
        return {"input_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]}

    return raw.map(tokenize, batched=True, num_proc=workers, remove_columns=raw.column_names)


def ours(raw, tokenizer, workers: int, block_size: int, concatenate: bool = True, preprocessor_hook=None):
    """(b) diff-trainer's Preprocessor: tokenise, <DFF> labels, filter, pack (or pad) and sanity check."""
    args = DataArguments(
        block_size=block_size,
        preprocessing_num_workers=workers,
        concatenate_texts=concatenate,
        ignore_long_samples=not concatenate,
        dff_token=DFF,
        dff_labels="auto",
    )
    preprocessor = Preprocessor(tokenizer, args)
    if preprocessor_hook:
        preprocessor_hook(preprocessor)
    rows, _layout = preprocessor.run(DatasetDict({"train": raw}))
    return rows["train"]


def ours_padded(raw, tokenizer, workers: int, block_size: int):
    """(b') The same with one left-padded row per sample; samples of block_size tokens or more are dropped."""
    return ours(raw, tokenizer, workers, block_size, concatenate=False)


def run_clm_recipe(raw, tokenizer, workers: int, block_size: int):
    """(c) transformers' run_clm.py: tokenizer(text) (ids + attention mask), then group_texts into blocks."""

    def tokenize(batch):
        return tokenizer(batch["text"])

    def group_texts(batch):
        # join every column's lists, drop the remainder that does not fill a block, copy ids to labels
        joined = {name: list(chain.from_iterable(lists)) for name, lists in batch.items()}
        usable = len(joined["input_ids"]) // block_size * block_size
        grouped = {
            name: [values[i : i + block_size] for i in range(0, usable, block_size)] for name, values in joined.items()
        }
        grouped["labels"] = grouped["input_ids"].copy()
        return grouped

    tokenized = raw.map(tokenize, batched=True, num_proc=workers, remove_columns=raw.column_names)
    return tokenized.map(group_texts, batched=True, num_proc=workers)


VARIANTS = {
    "raw tokenisation": raw_tokenisation,
    "ours, packed (--concatenate_texts)": ours,
    "ours, padded (left)": ours_padded,
    "run_clm (tokenise + group_texts)": run_clm_recipe,
}


def token_count(dataset) -> int:
    return int(pc.sum(pc.list_value_length(dataset.with_format("arrow")["input_ids"])).as_py())


def timed_steps(raw, tokenizer, workers: int, block_size: int) -> dict:
    """One packed run of the Preprocessor with each step timed: {step: (wall s, CPU s)}.

    The remainder of run() (select_columns) is reported as the difference to the total.
    """
    wall, cpu = {}, {}

    def timed(name, function):
        def call(*args, **kwargs):
            wall[name], cpu[name] = [], []
            with stopwatch(wall[name], cpu[name]):
                return function(*args, **kwargs)

        return call

    def hook(preprocessor):
        for name in ("tokenize", "label", "filter_samples", "pack"):
            setattr(preprocessor, name, timed(name, getattr(preprocessor, name)))

    original_check = pipeline.sanity_check
    pipeline.sanity_check = timed("sanity_check", original_check)
    try:
        total_wall, total_cpu = [], []
        with stopwatch(total_wall, total_cpu):
            ours(raw, tokenizer, workers, block_size, preprocessor_hook=hook)
    finally:
        pipeline.sanity_check = original_check
    steps = {name: (wall[name][0], cpu[name][0]) for name in wall}
    steps["rest of run()"] = (
        total_wall[0] - sum(w for w, _ in steps.values()),
        total_cpu[0] - sum(c for _, c in steps.values()),
    )
    steps["total"] = (total_wall[0], total_cpu[0])
    return steps


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_workers", type=int, default=2, help="num_proc of every map (all variants).")
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5, help="Rounds of all variants; the median is reported.")
    parser.add_argument("--record_chars", type=int, default=2000, help="Approximate characters per record.")
    parser.add_argument("--max_mb", type=float, default=0, help="Stop adding stdlib files past this size (0: all).")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--tokenizer_train_mb", type=float, default=2.0, help="Text the BPE is trained on.")
    parser.add_argument("--quick", action="store_true", help="--max_mb 4 --repeats 3 (minutes on a busy CPU)")
    args = parser.parse_args()
    if args.quick:
        args.max_mb, args.repeats = 4.0, 3
    return args


def main():
    args = parse_args()
    logging.basicConfig(level=logging.ERROR)
    datasets.disable_caching()
    datasets.disable_progress_bars()
    with results_file("preprocess", args.quick):
        measure(args)


def measure(args):
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as workdir:
        corpus = os.path.join(workdir, "stdlib.jsonl")
        records, size = write_corpus(corpus, args.record_chars, args.max_mb)
        raw = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=os.path.join(workdir, "hf"))
        megabytes = size / 1e6
        print(
            f"Corpus: {records} records, {megabytes:.1f} MB of stdlib source with {DFF} markers "
            f"({sysconfig.get_paths()['stdlib']})."
        )
        if megabytes < 20:
            print(
                "Warning: less than the 20 MB the benchmark is meant for; fixed costs (worker pools, ~0.2 s per "
                "map) weigh more."
            )

        start = time.perf_counter()
        slice_texts, taken = [], 0
        for text in raw["text"]:  # also reads the whole Arrow file once, so no variant pays for a cold page cache
            if taken < args.tokenizer_train_mb * 1e6:
                slice_texts.append(text)
                taken += len(text)
        tokenizer = train_bpe_tokenizer(slice_texts, args.vocab_size, dff_token=DFF, mask_token=None)
        print(f"BPE: vocab {len(tokenizer)}, trained on {taken / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s.")
        print(
            f"Workers: {args.num_workers}, block_size: {args.block_size}, repeats: {args.repeats}; "
            f"{machine_summary()}.\n"
        )

        wall = {name: [] for name in VARIANTS}
        cpu = {name: [] for name in VARIANTS}
        shapes = {}
        names = list(VARIANTS)
        for round_index in range(args.repeats):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                with stopwatch(wall[name], cpu[name]):
                    result = VARIANTS[name](raw, tokenizer, args.num_workers, args.block_size)
                shapes[name] = (len(result), token_count(result))
                del result

        raw_wall, raw_cpu = median(wall[names[0]]), median(cpu[names[0]])
        rows = []
        for name in names:
            seconds = median(wall[name])
            rows.append(
                [
                    name,
                    shapes[name][0],
                    shapes[name][1],
                    seconds,
                    min(wall[name]),
                    megabytes / seconds,
                    median(cpu[name]),
                ]
            )
        print(
            markdown_table(
                [
                    "variant",
                    "rows out",
                    "tokens out",
                    "wall s (median)",
                    "wall s (best)",
                    "MB/s (median)",
                    "CPU s (median)",
                ],
                rows,
            )
        )

        ratios = {
            name: (median(wall[name]) / raw_wall, min(wall[name]) / min(wall[names[0]]), median(cpu[name]) / raw_cpu)
            for name in names[1:]
        }
        print("\nRatios to raw tokenisation (CPU time counts the workers; other processes barely change it):\n")
        print(
            markdown_table(
                ["variant", "wall (median)", "wall (best)", "CPU (median)"],
                [[name, *values] for name, values in ratios.items()],
            )
        )
        verdicts = ", ".join(
            f"{measure} {value:.2f} ({'met' if value <= 1.3 else 'missed'})"
            for measure, value in zip(("wall median", "wall best", "CPU"), ratios[names[1]])
        )
        print(f"\nTarget ours (packed) ≤ 1.3 × raw: {verdicts}; load average now {load_average()}.\n")

        steps = timed_steps(raw, tokenizer, args.num_workers, args.block_size)
        print("Where ours (packed) spends its time, one extra run:\n")
        print(
            markdown_table(
                ["step", "wall s", "CPU s", "CPU share", "CPU × raw tokenisation"],
                [[name, w, c, f"{c / steps['total'][1]:.0%}", c / raw_cpu] for name, (w, c) in steps.items()],
            )
        )


if __name__ == "__main__":
    main()
