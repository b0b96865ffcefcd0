"""data_scripts/make_chat_corpus.py: conversations from docstring records, each record used once, deterministic per
seed, records the chat loader accepts; and the bundled corpus."""

from pathlib import Path

import pytest

from data_scripts.make_chat_corpus import SYSTEM, conversations, main, parse_topic
from diff_trainer.data.chat import check_messages
from diff_trainer.data.io import read_jsonl, write_jsonl

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "stdlib_chat"
TEXTS = [
    "def json.dumps(obj, *, skipkeys=False)<DFF>Serialize ``obj`` to a JSON formatted ``str``.",
    "async def asyncio.sleep(delay, result=None)<DFF>Coroutine that completes after a given time (in seconds).",
    "class json.JSONDecoder(object)<DFF>Simple JSON decoder.",
    "property email.message.EmailMessage.is_attachment<DFF>Return True if the part is an attachment.",
    "module json<DFF>JSON (JavaScript Object Notation) is a subset of JavaScript syntax.",
    "def json.loads(s)<DFF>Deserialize ``s`` to a Python object.",
    "def json.load(fp)<DFF>Deserialize ``fp`` to a Python object.",
]


def test_parse_topic():
    topic = parse_topic(TEXTS[1])
    assert (topic.kind, topic.name, topic.module) == ("def", "asyncio.sleep", "asyncio")
    assert topic.signature == "async def asyncio.sleep(delay, result=None)"
    assert parse_topic(TEXTS[4]).name == "json" and parse_topic(TEXTS[3]).kind == "property"


def answers_and_questions(records):
    """(summary answers, signature answers, first questions) over all conversations."""
    summaries, signatures, firsts = [], [], []
    for record in records:
        messages = [m for m in record["messages"] if m["role"] != "system"]
        check_messages(messages)
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        firsts.append(messages[0]["content"])
        for answer in messages[1::2]:
            (signatures if answer["content"].startswith("`") else summaries).append(answer["content"])
    return summaries, signatures, firsts


def test_every_record_once_by_module_and_seeded():
    records = conversations(TEXTS, seed=3)
    summaries, signatures, _ = answers_and_questions(records)
    assert sorted(summaries) == sorted(text.split("<DFF>")[1] for text in TEXTS)
    assert set(signatures) <= {f"`{text.split('<DFF>')[0]}`" for text in TEXTS}
    modules = [
        {
            text.split("`")[1].split(".")[0]
            for m in r["messages"]
            if m["role"] == "user"
            for text in [m["content"]]
            if "`" in text
        }
        for r in records
    ]
    assert all(len(names) == 1 for names in modules)  # one module per conversation
    assert sorted(min(names) for names in modules) == ["asyncio", "email", "json", "json"]
    assert conversations(TEXTS, seed=3) == records
    assert any(conversations(TEXTS, seed=seed) != records for seed in range(4, 8))


def test_follow_up_refers_to_the_previous_topic():
    records = [record for seed in range(3) for record in conversations(TEXTS, seed)]
    pairs = [
        (m["messages"][i - 3]["content"], m["messages"][i]["content"])
        for m in records
        for i in range(3, len(m["messages"]))
        if m["messages"][i]["content"].startswith("`")
    ]
    assert pairs, "no signature follow-up in three seeds"
    for question, signature in pairs:  # the signature is of the name asked about before "How do I call it?"
        assert question.split("`")[1] in signature


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
    assert answers_and_questions(validation)[0] == [text.split("<DFF>")[1] for text in TEXTS[5:]]
    assert (
        f"| `train.jsonl.zst` | {len(list(read_jsonl(tmp_path / 'a' / 'train.jsonl.zst')))} |"
        in (tmp_path / "a" / "README.md").read_text()
    )


def test_missing_source(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--source_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert "make_stdlib_corpus.py" in capsys.readouterr().err


def test_bundled_corpus():
    """The committed files: valid conversations, the counts of the README, some with a system message."""
    readme = (BUNDLED / "README.md").read_text()
    for split in ("train", "validation"):
        records = list(read_jsonl(BUNDLED / f"{split}.jsonl.zst"))
        answers_and_questions(records)
        assert f"| `{split}.jsonl.zst` | {len(records)} |" in readme
    assert sum(r["messages"][0]["content"] == SYSTEM for r in records) > 0
