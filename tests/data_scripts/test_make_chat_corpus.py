"""data_scripts/make_chat_corpus.py: conversations from docstring records, each record used once, every answer read
from the text the conversation shows (checked against a hand-written expectation), deterministic per seed, records
the chat loader accepts; and the bundled corpus."""

from pathlib import Path

import pytest

from data_scripts.make_chat_corpus import (
    QUESTIONS,
    SHOW_FIRST,
    SHOW_NEXT,
    SYSTEM,
    answer,
    conversations,
    main,
    parse_topic,
    question_kinds,
    shown,
)
from diff_trainer.data.chat import check_messages
from diff_trainer.data.io import read_jsonl, write_jsonl

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "stdlib_chat"
SOURCE = BUNDLED.parent / "stdlib_docstrings"
TEXTS = [
    "def json.dumps(obj, *, skipkeys=False)<DFF>Serialize ``obj`` to a JSON formatted ``str``.",
    "async def asyncio.sleep(delay, result=None)<DFF>Coroutine that completes after a given time (in seconds).",
    "class json.JSONDecoder(object)<DFF>Simple JSON decoder. Performs the following translations.",
    "property email.message.EmailMessage.is_attachment<DFF>Return True if the part is an attachment.",
    "module json<DFF>JSON (JavaScript Object Notation) is a subset of JavaScript syntax.",
    "def json.loads(s)<DFF>Deserialize ``s`` to a Python object.",
    "def json.load(fp)<DFF>Deserialize ``fp`` to a Python object.",
    "def os.getcwd()<DFF>Return a unicode string representing the current working directory.",
    "class asyncio.events.Handle<DFF>Object returned by callback registration methods.",
    "def typing.reveal_type(obj: T, /) -> T<DFF>Reveal the inferred type of a variable. When a static type checker "
    "encounters a call, it emits a diagnostic.",
]
KIND_OF_QUESTION = {question: kind for kind, questions in QUESTIONS.items() for question in questions}


def test_parse_topic_and_answers_by_hand():
    topic = parse_topic(TEXTS[1])
    assert (topic.kind, topic.name, topic.module) == ("def", "asyncio.sleep", "asyncio")
    assert topic.signature == "async def asyncio.sleep(delay, result=None)"
    assert parse_topic(TEXTS[4]).name == "json" and parse_topic(TEXTS[3]).kind == "property"
    expected = {
        0: {"summary": "Serialize ``obj`` to a JSON formatted ``str``.", "parameters": "`obj, *, skipkeys=False`"},
        1: {"name": "`asyncio.sleep`", "kind": "A function.", "parameters": "`delay, result=None`"},
        2: {"summary": "Simple JSON decoder.", "bases": "`object`", "kind": "A class."},
        3: {"kind": "A property.", "name": "`email.message.EmailMessage.is_attachment`"},
        4: {"kind": "A module.", "name": "`json`"},
        7: {"parameters": "None."},
        9: {"summary": "Reveal the inferred type of a variable.", "parameters": "`obj: T, /`"},
    }
    for index, answers in expected.items():
        for kind, reply in answers.items():
            assert answer(parse_topic(TEXTS[index]), kind) == reply, (index, kind)
    assert question_kinds(parse_topic(TEXTS[8])) == ("summary", "name", "kind")  # a class without bases
    assert question_kinds(parse_topic(TEXTS[3])) == ("summary", "name", "kind")
    assert question_kinds(parse_topic(TEXTS[2]))[-1] == "bases"


def by_shown(texts):
    """The source texts by what a conversation shows of them."""
    return {shown(parse_topic(text)): text for text in texts}


def topics_of(record, sources=None):
    """(source text shown, [(question kind, reply)]) per topic of a conversation, checking roles and the format of
    each turn: a topic opens with its opening words, the declaration and summary of a text (`sources`: the texts by
    what a conversation shows of them, default those of TEXTS), and a question;
    a follow-up is a question alone."""
    messages = [m for m in record["messages"] if m["role"] != "system"]
    check_messages(messages)
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
    sources = sources or by_shown(TEXTS)
    topics = []
    for question, reply in zip(messages[::2], messages[1::2]):
        content = question["content"]
        asked = next(q for q in KIND_OF_QUESTION if content == q or content.endswith(" " + q))
        if content != asked:  # a topic opens
            opening = next(o for o in (SHOW_NEXT if topics else SHOW_FIRST) if content.startswith(o + " "))
            topics.append((sources[content[len(opening) + 1 : -len(asked) - 1]], []))
        topics[-1][1].append((KIND_OF_QUESTION[asked], reply["content"]))
    return topics


def test_every_record_once_answered_from_what_the_conversation_shows():
    records = conversations(TEXTS, seed=3)
    shown = [topic for record in records for topic in topics_of(record)]
    assert sorted(text for text, _ in shown) == sorted(TEXTS)
    for text, replies in shown:
        # follow-ups ask about the topic shown last: their answers are that topic's; the summary is always asked
        assert [reply for _, reply in replies] == [answer(parse_topic(text), kind) for kind, _ in replies]
        kinds = [kind for kind, _ in replies]
        assert "summary" in kinds and len(set(kinds)) == len(kinds) in (2, 3)
    modules = [{parse_topic(text).module for text, _ in topics_of(record)} for record in records]
    assert all(len(names) == 1 for names in modules)  # one module per conversation
    assert conversations(TEXTS, seed=3) == records
    assert any(conversations(TEXTS, seed=seed) != records for seed in range(4, 8))


def test_main_writes_splits_and_readme(tmp_path):
    source = tmp_path / "docstrings"
    write_jsonl([{"text": text} for text in TEXTS[:5]], source / "train.jsonl.zst")
    write_jsonl([{"text": text} for text in TEXTS[5:]], source / "validation.jsonl.zst")
    main(["--source_dir", str(source), "--output_dir", str(tmp_path / "a")])
    main(["--source_dir", str(source), "--output_dir", str(tmp_path / "b")])
    for name in ("train.jsonl.zst", "validation.jsonl.zst"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    readme = (tmp_path / "a" / "README.md").read_text()
    assert readme.replace(str(tmp_path / "a"), str(tmp_path / "b")) == (tmp_path / "b" / "README.md").read_text()
    validation = list(read_jsonl(tmp_path / "a" / "validation.jsonl.zst"))
    assert sorted(text for record in validation for text, _ in topics_of(record)) == sorted(TEXTS[5:])
    assert f"| `train.jsonl.zst` | {len(list(read_jsonl(tmp_path / 'a' / 'train.jsonl.zst')))} |" in readme


def test_missing_source(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--source_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert "make_stdlib_corpus.py" in capsys.readouterr().err


def test_bundled_corpus():
    """The committed files: every source record shown once, every answer read from what its conversation shows, the
    counts of the README, some conversations with a system message."""
    readme = (BUNDLED / "README.md").read_text()
    for split in ("train", "validation"):
        records = list(read_jsonl(BUNDLED / f"{split}.jsonl.zst"))
        texts = [record["text"] for record in read_jsonl(SOURCE / f"{split}.jsonl.zst")]
        sources = by_shown(texts)
        assert sorted(text for record in records for text, _ in topics_of(record, sources)) == sorted(texts)
        for record in records:
            for text, replies in topics_of(record, sources):
                assert [reply for _, reply in replies] == [answer(parse_topic(text), kind) for kind, _ in replies]
        assert f"| `{split}.jsonl.zst` | {len(records)} |" in readme
    assert sum(r["messages"][0]["content"] == SYSTEM for r in records) > 0
