"""Build the training data of a cascaded multi-stage diffusion model: keyword prefixes, coarse to fine, then text.

For each document of --input (`.jsonl` / `.jsonl.zst`, the string in --text_column) the offline YAKE extractor
ranks keywords (--method keywords: single words) or keyphrases (--method keyphrases: up to 3 words). K_s is the
top --num_keywords[s] of that one ranking, written in the order the document first uses them and joined by
--separator, so K1 ⊂ K2 ⊂ ... With --stages 3 each document gives

    stage1: "<DFF> K1"        stage2: "K1 <DFF> K2"        stage3: "K2 <DFF> text"

Documents that are empty, have no keyword, or contain the separator or `<DFF>` are skipped and counted.
Document i belongs to shard i % --num_shards; a shard writes D/stage{s}/shard-IIIII-of-NNNNN.jsonl.zst, each file
atomically, and last D/shards/shard-IIIII-of-NNNNN.summary.json: a shard with a summary is finished, and running it
again with the same flags does nothing. --merge interleaves the shards back into D/stage{s}.jsonl.zst in document
order, after checking every shard is there exactly once and all were built with the same flags.

    python data_scripts/make_cascade_data.py --input outputs/docstrings.jsonl.zst --output_dir outputs/cascade
    for i in 0 1 2 3; do
        python data_scripts/make_cascade_data.py --input F --output_dir D --shard_idx $i --num_shards 4
    done
    python data_scripts/make_cascade_data.py --output_dir D --merge
"""

import argparse
import contextlib
import heapq
import json
import multiprocessing
import sys
from collections import Counter
from functools import partial
from pathlib import Path

try:
    from diff_trainer.data.io import JSONL_SUFFIXES, atomic_text_writer, read_jsonl, write_jsonl
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.io import JSONL_SUFFIXES, atomic_text_writer, read_jsonl, write_jsonl

DFF = "<DFF>"
MAX_WORDS = {"keywords": 1, "keyphrases": 3}
SKIP_REASONS = ("empty", "no_keywords", "marker_in_text")
_extractors = {}  # one YAKE extractor per (process, method, size)


def ranked_keywords(text: str, method: str, top: int) -> list[str]:
    """YAKE's `top` best keywords of `text`, best first (lower score is better; ties broken by the keyword)."""
    import yake

    key = (method, top)
    if key not in _extractors:
        _extractors[key] = yake.KeywordExtractor(lan="en", n=MAX_WORDS[method], top=top)
    scored = _extractors[key].extract_keywords(text)
    return [keyword for keyword, _ in sorted(scored, key=lambda pair: (float(pair[1]), pair[0]))]


def in_document_order(keywords: list[str], text: str) -> list[str]:
    """`keywords` sorted by their first occurrence in `text` (case-insensitive); ties keep their given order."""
    lowered = text.lower()
    # a keyword not found as written (find gives -1) goes last
    return sorted(keywords, key=lambda keyword: lowered.find(keyword.lower()) % (len(lowered) + 1))


def stage_texts(text: str, ranked: list[str], num_keywords: list[int], separator: str) -> list[str]:
    """The records of one document, stage 1 first: `<DFF> K1`, `K1 <DFF> K2`, ..., `K_last <DFF> text`."""
    prefixes = [f" {separator} ".join(in_document_order(ranked[:count], text)) for count in num_keywords]
    conditions = ["", *prefixes]
    targets = [*prefixes, text]
    return [f"{condition} {DFF} {target}".lstrip(" ") for condition, target in zip(conditions, targets)]


def document_records(
    item: tuple[int, str], method: str, num_keywords: list[int], separator: str
) -> tuple[int, list[str] | None, str | None]:
    """(document index, its stage texts or None, the skip reason or None)."""
    index, text = item
    if not text.strip():
        return index, None, "empty"
    if DFF in text or separator in text:
        return index, None, "marker_in_text"
    ranked = [
        keyword
        for keyword in ranked_keywords(text, method, num_keywords[-1])
        if DFF not in keyword and separator not in keyword
    ]
    if not ranked:
        return index, None, "no_keywords"
    return index, stage_texts(text, ranked, num_keywords, separator), None


def read_documents(path: str | Path, text_column: str, shard_idx: int, num_shards: int):
    """(index, text) of the documents of this shard; a record without a string `text_column` is an error."""
    for index, record in enumerate(read_jsonl(path)):
        if index % num_shards != shard_idx:
            continue
        text = record.get(text_column)
        if not isinstance(text, str):
            raise ValueError(
                f"{path}: record {index + 1} has no string column {text_column!r} "
                f"(columns: {sorted(record)}); pass --text_column"
            )
        yield index, text


def shard_name(shard_idx: int, num_shards: int) -> str:
    return f"shard-{shard_idx:05d}-of-{num_shards:05d}"


def settings_of(
    input_path: str, text_column: str, method: str, num_keywords: list[int], separator: str, num_shards: int
) -> dict:
    """What makes two shards parts of one run."""
    return {
        "input": str(Path(input_path).resolve()),
        "text_column": text_column,
        "method": method,
        "num_keywords": num_keywords,
        "separator": separator,
        "num_shards": num_shards,
    }


def build_shard(
    input_path: str,
    output_dir: str | Path,
    method: str = "keywords",
    num_keywords: list[int] = (4, 8),
    separator: str = "<SEP>",
    text_column: str = "text",
    shard_idx: int = 0,
    num_shards: int = 1,
    n_process: int = 1,
) -> dict:
    """Write one shard's stage files, then its summary; a finished shard with the same settings is left alone."""
    output_dir, num_keywords = Path(output_dir), list(num_keywords)
    settings = settings_of(input_path, text_column, method, num_keywords, separator, num_shards)
    summary_file = output_dir / "shards" / f"{shard_name(shard_idx, num_shards)}.summary.json"
    if summary_file.is_file():
        done = json.loads(summary_file.read_text(encoding="utf-8"))
        if done["settings"] != settings:
            raise ValueError(
                f"{summary_file} was built with other settings ({done['settings']}); "
                f"use another --output_dir or delete it"
            )
        return {**done, "already_done": True}
    stages = len(num_keywords) + 1
    skipped = Counter({reason: 0 for reason in SKIP_REASONS})
    documents = read_documents(input_path, text_column, shard_idx, num_shards)
    work = partial(document_records, method=method, num_keywords=num_keywords, separator=separator)
    written = 0
    with contextlib.ExitStack() as stack:
        handles = [
            stack.enter_context(
                atomic_text_writer(output_dir / f"stage{stage}" / f"{shard_name(shard_idx, num_shards)}.jsonl.zst")
            )
            for stage in range(1, stages + 1)
        ]
        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(n_process)) if n_process > 1 else None
        results = pool.imap(work, documents, chunksize=16) if pool else map(work, documents)
        for index, texts, reason in results:
            if reason:
                skipped[reason] += 1
                continue
            for handle, text in zip(handles, texts):
                handle.write(json.dumps({"text": text, "doc_index": index}, ensure_ascii=False) + "\n")
            written += 1
    summary = {
        "settings": settings,
        "shard_idx": shard_idx,
        "stages": stages,
        "documents": written,
        "skipped": dict(sorted(skipped.items())),
    }
    with atomic_text_writer(summary_file) as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
    return summary


def merge_shards(output_dir: str | Path) -> dict:
    """Interleave every finished shard of `output_dir` into stage{s}.jsonl.zst, in document order.

    Raises ValueError when shards of different runs are present or one is missing or unfinished.
    """
    output_dir = Path(output_dir)
    summaries = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((output_dir / "shards").glob("shard-*.summary.json"))
    ]
    if not summaries:
        raise ValueError(f"{output_dir / 'shards'} holds no finished shard: build the shards first")
    runs = {json.dumps(summary["settings"], sort_keys=True) for summary in summaries}
    if len(runs) > 1:
        raise ValueError(
            f"{output_dir / 'shards'} holds overlapping shards of different runs ({sorted(runs)}); "
            f"keep one run's shards per --output_dir"
        )
    num_shards = summaries[0]["settings"]["num_shards"]
    missing = sorted(set(range(num_shards)) - {summary["shard_idx"] for summary in summaries})
    if missing:
        raise ValueError(
            f"missing or unfinished shards {missing} of {num_shards} in {output_dir}: run them with --shard_idx"
        )
    stages = summaries[0]["stages"]
    counts = {}
    for stage in range(1, stages + 1):
        shard_files = [
            output_dir / f"stage{stage}" / f"{shard_name(index, num_shards)}.jsonl.zst" for index in range(num_shards)
        ]
        records = sorted_merge(shard_files)
        counts[f"stage{stage}.jsonl.zst"] = write_jsonl(
            records, output_dir / f"stage{stage}.jsonl.zst", description=f"merging stage {stage}"
        )
    skipped = Counter()
    for summary in summaries:
        skipped.update(summary["skipped"])
    return {
        "files": counts,
        "documents": sum(summary["documents"] for summary in summaries),
        "skipped": dict(sorted(skipped.items())),
    }


def sorted_merge(shard_files: list[Path]):
    """Records of shard files (each in document order) merged into one stream in document order."""
    streams = [((record["doc_index"], record) for record in read_jsonl(path)) for path in shard_files]
    return (record for _, record in heapq.merge(*streams, key=lambda pair: pair[0]))


def default_num_keywords(stages: int) -> list[int]:
    """4, 8, 16, ... keywords for the stage-1, stage-2, ... prefixes."""
    return [4 * 2**stage for stage in range(stages - 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="documents, .jsonl or .jsonl.zst (required unless --merge)")
    parser.add_argument("--output_dir", required=True, help="directory for stage files, shards and summaries")
    parser.add_argument("--text_column", default="text", help="column holding the document (default: %(default)s)")
    parser.add_argument(
        "--method",
        choices=sorted(MAX_WORDS),
        default="keywords",
        help="single-word keywords or keyphrases of up to 3 words (default: %(default)s)",
    )
    parser.add_argument("--stages", type=int, default=3, help="number of stages, >= 2 (default: %(default)s)")
    parser.add_argument(
        "--num_keywords",
        type=int,
        nargs="+",
        help="prefix size of stages 1..stages-1, increasing (default: 4 8 16 ...)",
    )
    parser.add_argument("--separator", default="<SEP>", help="token between keywords (default: %(default)s)")
    parser.add_argument("--shard_idx", type=int, default=0, help="this shard's index, 0..num_shards-1")
    parser.add_argument("--num_shards", type=int, default=1, help="number of shards (default: %(default)s)")
    parser.add_argument("--n_process", type=int, default=1, help="processes extracting keywords in this shard")
    parser.add_argument("--merge", action="store_true", help="join the finished shards of --output_dir")
    args = parser.parse_args(argv)
    try:
        if args.merge:
            merged = merge_shards(args.output_dir)
            print(
                f"{merged['documents']} documents merged into {args.output_dir}: {merged['files']}; "
                f"skipped {merged['skipped']}"
            )
            return
        if args.input is None or not args.input.endswith(JSONL_SUFFIXES):
            parser.error(f"--input must be a {' or '.join(JSONL_SUFFIXES)} file (or use --merge), got {args.input}")
        if args.stages < 2:
            parser.error(f"--stages must be >= 2, got {args.stages}")
        num_keywords = args.num_keywords or default_num_keywords(args.stages)
        if (
            len(num_keywords) != args.stages - 1
            or num_keywords[0] < 1
            or any(later <= earlier for earlier, later in zip(num_keywords, num_keywords[1:]))
        ):
            parser.error(
                f"--num_keywords needs {args.stages - 1} increasing positive counts for --stages "
                f"{args.stages}, got {num_keywords}"
            )
        if args.num_shards < 1 or not 0 <= args.shard_idx < args.num_shards:
            parser.error(
                f"--shard_idx must be in 0..{args.num_shards - 1} and --num_shards >= 1, "
                f"got --shard_idx {args.shard_idx} --num_shards {args.num_shards}"
            )
        if args.n_process < 1 or not args.separator.strip() or DFF in args.separator:
            parser.error("--n_process must be >= 1 and --separator a non-blank token other than <DFF>")
        if not Path(args.input).is_file():
            parser.error(f"--input {args.input} does not exist")
        summary = build_shard(
            args.input,
            args.output_dir,
            args.method,
            num_keywords,
            args.separator,
            args.text_column,
            args.shard_idx,
            args.num_shards,
            args.n_process,
        )
    except ValueError as error:
        parser.error(str(error))
    state = "already finished, nothing done" if summary.get("already_done") else "written"
    print(
        f"{shard_name(args.shard_idx, args.num_shards)} {state}: {summary['documents']} documents, "
        f"{summary['stages']} stages in {args.output_dir}; skipped {summary['skipped']}"
    )


if __name__ == "__main__":
    main()
