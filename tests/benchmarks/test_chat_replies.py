"""benchmarks/chat_replies.py: the turns it scores (each assistant turn with the conversation before it and the kind of
question asked) and its summary of exact matches and token F1, on a hand example."""

import os
import sys

import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
)
import chat_replies  # noqa: E402

SYSTEM = {"role": "system", "content": "Be brief."}
SHOWN = {"role": "user", "content": "Read this: `def os.getcwd()`: Return the directory. What does it do?"}
RECORD = {
    "messages": [
        SYSTEM,
        SHOWN,
        {"role": "assistant", "content": "Return the directory."},
        {"role": "user", "content": "What is it called?"},
        {"role": "assistant", "content": "`os.getcwd`"},
        {"role": "user", "content": "Thanks, bye."},
        {"role": "assistant", "content": "Bye."},
    ]
}


def test_every_assistant_turn_with_the_conversation_before_it():
    items = chat_replies.turns([{"messages": [{"role": "user", "content": "Hi"}]}, RECORD])
    expected = [(1, 2, "summary"), (1, 4, "name"), (1, 6, "other")]
    assert [(item["conversation"], item["turn"], item["kind"]) for item in items] == expected
    assert items[1]["messages"] == RECORD["messages"][:4] and items[1]["expected"] == "`os.getcwd`"


def test_scores_by_hand():
    items = [
        {"kind": "name", "exact": True, "f1": 1.0},
        {"kind": "summary", "exact": False, "f1": 0.5},
        {"kind": "summary", "exact": False, "f1": 0.0},
    ]
    result = chat_replies.scores(items)
    assert (result["replies"], result["exact_match"], result["token_f1"]) == (3, pytest.approx(1 / 3), 0.5)
    assert result["by_kind"] == {
        "name": {"replies": 1, "exact_match": 1.0, "token_f1": 1.0},
        "summary": {"replies": 2, "exact_match": 0.0, "token_f1": 0.25},
    }
