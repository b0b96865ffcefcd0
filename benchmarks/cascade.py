"""Cascade vs. single model: a three-stage keyword cascade against one model trained on the plain text, same budget.

    nice -n 10 python benchmarks/cascade.py --quick      # tiny: 40 steps per stage; 25 minutes on the shared 2-core CPU
    python benchmarks/cascade.py [--steps 1500] [--hidden 128] [--layers 4] [--mc_samples 32] [--samples 32]

Data: the bundled docstrings (the text after `<DFF>` of data/stdlib_docstrings), train split for training, the
validation split held out. make_cascade_data.py turns each document into `<DFF> K1`, `K1 <DFF> K2`, `K2 <DFF>
text` (4 and 8 YAKE keywords). The cascade is `diff-train-cascade` on configs/cascade with a smaller model and
--steps / 3 optimizer steps per stage, each stage starting from the previous one. The single model is stage 3's
configuration (same net, same block size, same batch) trained for --steps steps on `<DFF> text`.

Measured on the held-out documents that fit every block:
- the held-out bound in bits per text byte: the single model's ELBO of `text` (LLaDA eq. 14, right-padded rows as in
  training, so it bounds -log p(text)); for the cascade ELBO(K1) + ELBO(K2 | K1) + ELBO(text | K2), which bounds
  -log q(text) of the cascade's joint q(K1, K2, text), since the keywords are a function of the text;
- from --samples unconditional samples of each: the corpus keyword coverage (share of a sample's top YAKE keywords
  that are keywords of some training document) and, for the cascade, the plan coverage (share of the stage-2
  keywords K2 that appear in the final text).
"""

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from common import REPO_ROOT, cached_build, machine_summary, markdown_table, results_file
from data_scripts.make_cascade_data import build_shard, merge_shards, ranked_keywords  # noqa: E402
from diff_trainer.data.io import read_jsonl, write_jsonl  # noqa: E402

CORPUS = os.path.join(REPO_ROOT, "data", "stdlib_docstrings")
SEPARATOR = "<SEP>"
DFF = "<DFF>"
STAGE_LENGTHS = (64, 160, 256)  # tokens sampled per stage (bytes); stage 1 and 2 records are shorter than their blocks
TOKENS_PER_STEP = 2  # sampling steps = length / 2


def plain_documents(split: str, path: str) -> None:
    """The docstrings of one split of the bundled corpus (its records are signature<DFF>docstring) as `text`."""
    records = read_jsonl(os.path.join(CORPUS, f"{split}.jsonl.zst"))
    write_jsonl(({"text": record["text"].split(DFF, 1)[1].strip()} for record in records), path)


def build_data(directory: str) -> None:
    """train/ and heldout/: stage{1,2,3}.jsonl.zst from make_cascade_data.py, and single.jsonl.zst (`<DFF> text`)."""
    for split, name in (("train", "train"), ("validation", "heldout")):
        documents = os.path.join(directory, f"{name}_documents.jsonl.zst")
        plain_documents(split, documents)
        build_shard(documents, os.path.join(directory, name), "keywords", [4, 8], SEPARATOR)
        merge_shards(os.path.join(directory, name))
        records = read_jsonl(os.path.join(directory, name, "stage3.jsonl.zst"))
        write_jsonl(
            (
                {"text": f"{DFF} {record['text'].split(DFF, 1)[1].strip()}", "doc_index": record["doc_index"]}
                for record in records
            ),
            os.path.join(directory, name, "single.jsonl.zst"),
        )


def model_flags(args) -> dict:
    return {
        "config_overrides": f"hidden_size={args.hidden},intermediate_size={3 * args.hidden},"
        f"num_hidden_layers={args.layers},num_attention_heads=4,num_key_value_heads=4,"
        "max_position_embeddings=512",
        "do_eval": False,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 50,
        "disable_tqdm": True,
        "per_device_train_batch_size": args.batch_size,
    }


def write_cascade_config(directory: str, data: str, runs: str, args) -> str:
    """configs/cascade with the benchmark's model size, steps per stage, data and output root."""
    source = os.path.join(REPO_ROOT, "configs", "cascade")
    with open(os.path.join(source, "cascade.yaml"), encoding="utf-8") as handle:
        cascade = yaml.safe_load(handle)
    cascade["output_root"] = runs
    cascade["train"] = {**cascade["train"], **model_flags(args), "max_steps": args.steps // 3}
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "cascade.yaml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(cascade, handle)
    for stage in (1, 2, 3):
        with open(os.path.join(source, f"stage{stage}.yaml"), encoding="utf-8") as handle:
            flags = yaml.safe_load(handle)
        flags["train_file"] = os.path.join(data, "train", f"stage{stage}.jsonl.zst")
        with open(os.path.join(directory, f"stage{stage}.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(flags, handle)
    return directory


def train_both(work: str, data: str, args) -> dict:
    """Train the cascade (diff-train-cascade) and the single model (its stage-3 flags); their dirs and seconds."""
    from diff_trainer.cli import train_cascade
    from diff_trainer.cli.training_runs import train

    runs = os.path.join(work, "runs")
    shutil.rmtree(runs, ignore_errors=True)
    config_dir = write_cascade_config(os.path.join(work, "config"), data, runs, args)
    seconds = {}
    start = time.perf_counter()
    train_cascade.main([config_dir, "--stages", "1", "2", "3"])
    seconds["cascade"] = time.perf_counter() - start
    stages = train_cascade.stage_runs(Path(config_dir), [1, 2, 3], None, each_from_start=True)
    single = {
        **list(stages.values())[2],
        "max_steps": args.steps,
        "prefix_shuffle": "none",
        "train_file": os.path.join(data, "train", "single.jsonl.zst"),
        "output_dir": os.path.join(runs, "single"),
    }
    start = time.perf_counter()
    train(single, os.path.join(REPO_ROOT, "run_clm_diff.py"), resume=False)
    seconds["single"] = time.perf_counter() - start
    return {
        "stages": [flags["output_dir"] for flags in stages.values()],
        "single": single["output_dir"],
        "blocks": [flags["block_size"] for flags in stages.values()],
        "seconds": seconds,
    }


def heldout_rows(tokenizer, texts: list[str], block_size: int):
    """Rows as training builds them (<DFF> labels, one record per row, trained EOS filling the right)."""
    import torch

    from diff_trainer.data.labels import dff_labels
    from diff_trainer.data.packing import pad_to_block

    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    labels, _ = dff_labels(ids, tokenizer.convert_tokens_to_ids([DFF]))
    rows = pad_to_block(ids, labels, block_size, tokenizer.eos_token_id, "right")
    return torch.as_tensor(rows["input_ids"]), torch.as_tensor(rows["labels"]) != -100


def elbo_per_record(model_dir: str, texts: list[str], block_size: int, mc_samples: int, seed: int) -> list[float]:
    """The ELBO bound (nats) of each record's part from <DFF> on, given the part before."""
    from diff_trainer.cli.generate import open_checkpoint
    from diff_trainer.diffusion.elbo import elbo_nll
    from diff_trainer.objectives.masked import seeded_generator

    model, tokenizer, diffusion = open_checkpoint(model_dir)
    generator = seeded_generator(seed)
    nlls = []
    for first in range(0, len(texts), 8):
        ids, maskable = heldout_rows(tokenizer, texts[first : first + 8], block_size)
        nlls += elbo_nll(
            lambda noisy: model(input_ids=noisy).logits,
            ids,
            maskable,
            diffusion["mask_token_id"],
            mc_samples,
            generator=generator,
        ).tolist()
    return nlls


def heldout_documents(data: str, blocks: list[int], limit: int) -> tuple[list[str], list[list[str]]]:
    """(plain texts, per stage the records) of the held-out documents whose records fit every stage's block."""
    stages = [
        {
            record["doc_index"]: record["text"]
            for record in read_jsonl(os.path.join(data, "heldout", f"stage{stage}.jsonl.zst"))
        }
        for stage in (1, 2, 3)
    ]
    fitting = [
        index
        for index in sorted(stages[2])
        if all(len(stage[index].encode("utf-8")) + 1 <= block for stage, block in zip(stages, blocks))
    ][:limit]
    texts = [stages[2][index].split(DFF, 1)[1].strip() for index in fitting]
    return texts, [[stage[index] for index in fitting] for stage in stages]


def corpus_keywords(data: str) -> set[str]:
    """Every keyword (lower case) of a training document's stage-2 target K2."""
    keywords = set()
    for record in read_jsonl(os.path.join(data, "train", "stage2.jsonl.zst")):
        keywords.update(word.strip().lower() for word in record["text"].split(DFF, 1)[1].split(SEPARATOR))
    return keywords


def keyword_coverage(text: str, vocabulary: set[str]) -> float | None:
    """Share of the text's top-8 YAKE keywords that are corpus keywords (None: no keyword found)."""
    found = [keyword.lower() for keyword in ranked_keywords(text, "keywords", 8)] if text.strip() else []
    return sum(keyword in vocabulary for keyword in found) / len(found) if found else None


def plan_coverage(plan: str, text: str) -> float | None:
    """Share of the planned keywords (stage-2 output, <SEP>-separated) found in the text (None: empty plan)."""
    planned = [word.strip().lower() for word in plan.split(SEPARATOR) if word.strip()]
    return sum(word in text.lower() for word in planned) / len(planned) if planned else None


def mean(values) -> float | str:
    """The mean of the values that are not None ("-" when none is)."""
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else "-"


def sample_both(work: str, trained: dict, args) -> dict:
    """Unconditional samples: diff-generate-cascade over the stages, diff-generate on the single model."""
    from diff_trainer.cli import generate, generate_cascade

    common_flags = ["--samples", str(args.samples), "--temperature", "1.0", "--seed", str(args.seed)]
    cascade_file, single_file = os.path.join(work, "cascade_samples.jsonl"), os.path.join(work, "single_samples.jsonl")
    generate_cascade.main(
        [
            "--stages",
            *trained["stages"],
            "--gen_length",
            *map(str, STAGE_LENGTHS),
            "--steps",
            *(str(length // TOKENS_PER_STEP) for length in STAGE_LENGTHS),
            "--output",
            cascade_file,
            *common_flags,
        ]
    )
    generate.main(
        [
            "--model",
            trained["single"],
            "--prompt",
            DFF,
            "--gen_length",
            str(STAGE_LENGTHS[-1]),
            "--steps",
            str(STAGE_LENGTHS[-1] // TOKENS_PER_STEP),
            "--output",
            single_file,
            *common_flags,
        ]
    )
    cascade = [json.loads(line) for line in open(cascade_file, encoding="utf-8")]
    single = [json.loads(line)["completion"].strip() for line in open(single_file, encoding="utf-8")]
    return {"cascade": cascade, "single": single}


def measure(args) -> None:
    print(machine_summary())
    work = os.path.join(REPO_ROOT, "outputs", "benchmarks", "cascade" + ("_quick" if args.quick else ""))
    data = cached_build(
        os.path.join(work, "data"),
        {"num_keywords": [4, 8], "separator": SEPARATOR},
        [CORPUS, os.path.join(REPO_ROOT, "data_scripts", "make_cascade_data.py")],
        build_data,
        "cascade stage files",
    )
    trained = train_both(work, data, args)
    texts, stage_records = heldout_documents(data, trained["blocks"], args.eval_docs)
    text_bytes = sum(len(text.encode("utf-8")) for text in texts)
    stage_nll = [
        elbo_per_record(path, records, block, args.mc_samples, args.seed)
        for path, records, block in zip(trained["stages"], stage_records, trained["blocks"])
    ]
    single_nll = elbo_per_record(
        trained["single"], [f"{DFF} {text}" for text in texts], trained["blocks"][-1], args.mc_samples, args.seed
    )
    samples = sample_both(work, trained, args)
    vocabulary = corpus_keywords(data)

    def bits_per_byte(nlls):
        return sum(nlls) / text_bytes / math.log(2)

    cascade_bound = [sum(parts) for parts in zip(*stage_nll)]
    rows = [
        [
            "cascade (3 stages)",
            f"3 x {args.steps // 3}",
            f"{trained['seconds']['cascade']:.0f}",
            bits_per_byte(cascade_bound),
            sum(cascade_bound) / len(texts),
            " + ".join(f"{sum(nlls) / len(texts):.1f}" for nlls in stage_nll),
            mean(keyword_coverage(record["text"], vocabulary) for record in samples["cascade"]),
            mean(plan_coverage(record["stages"][1], record["text"]) for record in samples["cascade"]),
        ],
        [
            "single (plain text)",
            str(args.steps),
            f"{trained['seconds']['single']:.0f}",
            bits_per_byte(single_nll),
            sum(single_nll) / len(texts),
            "-",
            mean(keyword_coverage(text, vocabulary) for text in samples["single"]),
            "-",
        ],
    ]
    print(
        f"\nHeld-out: {len(texts)} documents, {text_bytes} text bytes, {args.mc_samples} ELBO samples each; "
        f"{args.samples} samples per model; model hidden {args.hidden} x {args.layers} layers, batch "
        f"{args.batch_size}.\n"
    )
    print(
        markdown_table(
            [
                "model",
                "train steps",
                "train wall s",
                "held-out bound (bits/byte)",
                "nats/doc",
                "nats/doc K1 + K2 + text",
                "corpus keyword coverage",
                "plan coverage",
            ],
            rows,
        )
    )
    print("\nFirst samples:")
    for record, single in zip(samples["cascade"][:2], samples["single"][:2]):
        print(f"cascade: {' || '.join(record['stages'])}\nsingle:  {single}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--steps 120 --hidden 32 --layers 1 --batch_size 8 --mc_samples 4 --eval_docs 32 --samples 4",
    )
    parser.add_argument(
        "--steps", type=int, default=1500, help="optimizer steps of each model (cascade: per stage / 3)"
    )
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of every net")
    parser.add_argument("--layers", type=int, default=4, help="layers of every net")
    parser.add_argument("--batch_size", type=int, default=16, help="rows per optimizer step")
    parser.add_argument("--mc_samples", type=int, default=32, help="ELBO Monte-Carlo samples per held-out record")
    parser.add_argument("--eval_docs", type=int, default=1000, help="held-out documents (at most the split's)")
    parser.add_argument("--samples", type=int, default=32, help="unconditional samples per model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ELBO masks and the samples")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.hidden, args.layers, args.batch_size = 120, 32, 1, 8
        args.mc_samples, args.eval_docs, args.samples = 4, 32, 4
    return args


def main():
    args = parse_args()
    with results_file("cascade", args.quick):
        measure(args)


if __name__ == "__main__":
    sys.exit(main())
