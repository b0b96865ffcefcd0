"""Build a small conversational corpus from the stdlib_docstrings corpus: multi-turn questions about the standard
library, answered from its docstrings, as `{"messages": [...]}` records (TRL's conversational format).

Every docstring record is used once. Records are grouped by top-level module, shuffled within the group, and cut
into conversations of two topics (three or one at a module's end): the user asks what a name does (the answer is
its docstring summary), may ask how it is called (the answer is its signature: only the earlier turns say what "it"
is), and moves on to the next name of the same module. About half the conversations open with a system message.
The output depends only on the source files and `--seed`.

    python data_scripts/make_chat_corpus.py --source_dir data/stdlib_docstrings --output_dir data/stdlib_chat
"""

import argparse
import json
import random
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    from diff_trainer.data.io import read_jsonl, write_jsonl
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.io import read_jsonl, write_jsonl

DFF = "<DFF>"
SPLITS = ("train", "validation")
SYSTEM = "You answer questions about Python's standard library briefly, from its docstrings."
FIRST_QUESTIONS = {
    "def": ("What does `{name}` do?", "What is `{name}` for?", "Can you explain `{name}`?"),
    "class": ("What is `{name}`?", "What is the class `{name}` for?", "Can you explain `{name}`?"),
    "property": ("What does the property `{name}` give?", "What is `{name}`?"),
    "module": ("What is the `{name}` module for?", "What is in `{name}`?"),
}
NEXT_QUESTIONS = ("And `{name}`?", "What about `{name}`?", "Next one: `{name}`.")
CALL_QUESTIONS = ("How do I call it?", "What is its signature?", "How is it declared?")


@dataclass(frozen=True)
class Topic:
    """One docstring record: the kind of definition, its qualified name, its signature and its summary."""

    kind: str
    name: str
    signature: str
    summary: str

    @property
    def module(self) -> str:
        return self.name.split(".")[0]


def parse_topic(text: str) -> Topic:
    """A `signature<DFF>summary` record as a Topic (`async def` counts as `def`)."""
    signature, summary = text.split(DFF, 1)
    words = signature.split(" ")
    kind = "def" if words[0] == "async" else words[0]
    declared = " ".join(words[2:] if words[0] == "async" else words[1:])
    return Topic(kind, declared.split("(")[0], signature, summary)


def topic_turns(topic: Topic, question: str, rng: random.Random) -> list[dict]:
    """The question and answer about a topic, with a follow-up about its signature half the time."""
    turns = [
        {"role": "user", "content": question.format(name=topic.name)},
        {"role": "assistant", "content": topic.summary},
    ]
    if topic.kind in ("def", "class") and rng.random() < 0.5:
        turns += [
            {"role": "user", "content": rng.choice(CALL_QUESTIONS)},
            {"role": "assistant", "content": f"`{topic.signature}`"},
        ]
    return turns


def conversation(topics: list[Topic], rng: random.Random) -> dict:
    """One `messages` record about `topics` (all from one module)."""
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.5 else []
    for index, topic in enumerate(topics):
        questions = FIRST_QUESTIONS[topic.kind] if index == 0 else NEXT_QUESTIONS
        messages += topic_turns(topic, rng.choice(questions), rng)
    return {"messages": messages}


def conversations(texts: list[str], seed: int) -> list[dict]:
    """Every record in exactly one conversation of two topics (three for a module's odd remainder, one for a module
    with a single record)."""
    rng = random.Random(seed)
    groups: dict[str, list[Topic]] = {}
    for text in texts:
        topic = parse_topic(text)
        groups.setdefault(topic.module, []).append(topic)
    records = []
    for topics in groups.values():
        rng.shuffle(topics)
        while topics:
            size = len(topics) if len(topics) <= 3 else 2
            records.append(conversation(topics[:size], rng))
            topics = topics[size:]
    rng.shuffle(records)
    return records


def readme(counts: dict[str, int], example: dict, command: str, seed: int) -> str:
    """The corpus's README: format, counts, one record and the command that made it."""
    return f"""# stdlib_chat: conversations about the standard library

Multi-turn questions about functions, classes, properties and modules of CPython's standard library, answered
from their docstrings; made from `../stdlib_docstrings` (every record used once). One JSON object per line with a
`messages` list of `{{"role", "content"}}` turns (TRL's conversational format), zstandard-compressed.

| file | conversations |
|---|---|
| `train.jsonl.zst` | {counts["train"]} |
| `validation.jsonl.zst` | {counts["validation"]} |

A record:

    {json.dumps(example, ensure_ascii=False)}

Made with

    {command}

(seed {seed}); the same source files and seed give identical files. Licence: PSF-2.0, as the docstrings
(see `../stdlib_docstrings/LICENSE.txt`).
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source_dir",
        default="data/stdlib_docstrings",
        help="directory with train.jsonl.zst and validation.jsonl.zst of signature<DFF>summary texts",
    )
    parser.add_argument("--output_dir", required=True, help="directory for the conversations and README.md")
    parser.add_argument("--seed", type=int, default=0, help="seed of the grouping and the phrasing")
    args = parser.parse_args(argv)
    source, output = Path(args.source_dir), Path(args.output_dir)
    counts, example = {}, None
    for split in SPLITS:
        path = source / f"{split}.jsonl.zst"
        if not path.is_file():
            parser.error(
                f"{path} is missing; make it with python data_scripts/make_stdlib_corpus.py --output_dir {source}."
            )
        records = conversations([record["text"] for record in read_jsonl(path)], args.seed)
        counts[split] = write_jsonl(records, output / f"{split}.jsonl.zst", total=len(records))
        example = example or records[0]
    command = shlex.join(["python", "data_scripts/make_chat_corpus.py", *(argv if argv is not None else sys.argv[1:])])
    (output / "README.md").write_text(readme(counts, example, command, args.seed), encoding="utf-8")


if __name__ == "__main__":
    main()
