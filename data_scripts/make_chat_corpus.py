"""Build a small conversational corpus from the stdlib_docstrings corpus: multi-turn questions about docstrings of
the standard library that the user shows, answered from the text shown, as `{"messages": [...]}` records (TRL's
conversational format).

Every docstring record is used once. Records are grouped by top-level module, shuffled within the group, and cut
into conversations of two topics (three or one at a module's end). A topic opens with a user turn that shows, on one
line, a declaration with its docstring summary and asks one question; one or two follow-ups ask more about "it",
which only the earlier turns say. Every answer is read from the text shown (the summary's first sentence, the
qualified name, the parameters or a class's bases, the kind of object), so a small model can learn to answer about
names it never saw. About half the conversations open with a system message. The output depends only on the source
files and `--seed`.

    python data_scripts/make_chat_corpus.py --source_dir data/stdlib_docstrings --output_dir data/stdlib_chat
"""

import argparse
import json
import random
import re
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
SYSTEM = "You answer questions about the Python docstrings the user shows you, briefly."
SHOW_FIRST = ("Here is one:", "Read this:", "From the docs:")
SHOW_NEXT = ("Now this one:", "And this one:", "Next:")
# the questions of each kind; the answer to each is read from the shown declaration and summary
QUESTIONS = {
    "summary": ("What does it do?", "Sum it up in one sentence.", "What is it for?"),
    "name": ("What is it called?", "What is its full name?", "Which name does it have?"),
    "kind": ("What kind of object is it?", "Is it a function, a class, a property or a module?"),
    "parameters": ("What parameters does it take?", "What are its arguments?"),
    "bases": ("What does it inherit from?", "What are its bases?"),
}
KIND_ANSWERS = {"def": "A function.", "class": "A class.", "property": "A property.", "module": "A module."}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


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

    @property
    def arguments(self) -> str | None:
        """The text between the parentheses after the name (a function's parameters, a class's bases), None when
        the declaration has none."""
        start = self.signature.find("(", self.signature.find(self.name) + len(self.name))
        if start < 0:
            return None
        depth = 0
        for end in range(start, len(self.signature)):
            depth += {"(": 1, ")": -1}.get(self.signature[end], 0)
            if depth == 0:
                return self.signature[start + 1 : end]
        raise ValueError(f"unbalanced parentheses in {self.signature!r}")


def parse_topic(text: str) -> Topic:
    """A `signature<DFF>summary` record as a Topic (`async def` counts as `def`)."""
    signature, summary = text.split(DFF, 1)
    words = signature.split(" ")
    kind = "def" if words[0] == "async" else words[0]
    declared = " ".join(words[2:] if words[0] == "async" else words[1:])
    return Topic(kind, declared.split("(")[0], signature, summary)


def answer(topic: Topic, question_kind: str) -> str:
    """The reply to a question of `question_kind` about `topic`, read from its declaration and summary."""
    if question_kind == "summary":
        return SENTENCE_END.split(topic.summary, 1)[0]
    if question_kind == "name":
        return f"`{topic.name}`"
    if question_kind == "kind":
        return KIND_ANSWERS[topic.kind]
    return f"`{topic.arguments}`" if topic.arguments else "None."  # parameters or bases


def shown(topic: Topic) -> str:
    """The declaration and summary as a user shows them, on one line (as typed into `diff-chat`)."""
    return f"`{topic.signature}`: {topic.summary}"


def question_kinds(topic: Topic) -> tuple[str, ...]:
    """The kinds of question a topic can answer."""
    extra = {"def": ("parameters",), "class": ("bases",) if topic.arguments else ()}.get(topic.kind, ())
    return ("summary", "name", "kind", *extra)


def topic_turns(topic: Topic, show: str, rng: random.Random) -> list[dict]:
    """A user turn showing the topic (after the words `show`) with a question, its answer, and one or two follow-ups
    about "it"; the summary is always asked."""
    others = [kind for kind in question_kinds(topic) if kind != "summary"]
    kinds = ["summary", *rng.sample(others, rng.choice((1, 2)))]
    rng.shuffle(kinds)
    turns = []
    for index, kind in enumerate(kinds):
        question = rng.choice(QUESTIONS[kind])
        content = f"{show} {shown(topic)} {question}" if index == 0 else question
        turns += [{"role": "user", "content": content}, {"role": "assistant", "content": answer(topic, kind)}]
    return turns


def conversation(topics: list[Topic], rng: random.Random) -> dict:
    """One `messages` record about `topics` (all from one module)."""
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.5 else []
    for index, topic in enumerate(topics):
        messages += topic_turns(topic, rng.choice(SHOW_FIRST if index == 0 else SHOW_NEXT), rng)
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
    return f"""# stdlib_chat: conversations about docstrings of the standard library

Multi-turn conversations about functions, classes, properties and modules of CPython's standard library, made from
`../stdlib_docstrings` (every record used once). Each topic opens with a user turn that shows a declaration and the
summary of its docstring and asks about it; follow-ups ask more about "it". Every answer is read from the text shown:
the summary's first sentence, the qualified name, the parameters (a class's bases), or the kind of object. One JSON
object per line with a `messages` list of `{{"role", "content"}}` turns (TRL's conversational format),
zstandard-compressed. The validation conversations are about the validation docstrings, whose names the training
files never show.

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
