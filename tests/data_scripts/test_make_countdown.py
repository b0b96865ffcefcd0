"""data_scripts/make_countdown.py: every answer reaches its target by the reward, distinct problems, seeded files."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from diff_trainer.training.rewards import countdown, countdown_score

SCRIPT = Path(__file__).resolve().parents[2] / "data_scripts" / "make_countdown.py"
_spec = importlib.util.spec_from_file_location("make_countdown", SCRIPT)
make_countdown = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_countdown)


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("countdown")
    counts = make_countdown.make_countdown(
        output_dir, num_train=300, num_test=60, count=4, max_number=12, max_target=80, seed=3
    )
    return output_dir, counts


def test_every_answer_uses_each_number_once_and_the_reward_accepts_it(generated):
    output_dir, counts = generated
    assert counts == {"train.jsonl": 300, "test.jsonl": 60}
    for split in ("train", "test"):
        records = read(output_dir / f"{split}.jsonl")
        for record in records:
            numbers, target = record["numbers"], record["target"]
            assert len(numbers) == 4 and all(1 <= n <= 12 for n in numbers) and 1 <= target <= 80
            assert record["prompt"] == f"make {target} from {' '.join(map(str, numbers))}:"
            assert record["text"] == f"{record['prompt']}<DFF>{record['answer']}"
            assert sorted(
                int(n)
                for n in record["answer"]
                .replace("(", " ")
                .replace(")", " ")
                .replace("+", " ")
                .replace("-", " ")
                .replace("*", " ")
                .replace("/", " ")
                .split()
            ) == sorted(numbers)
        rewards = countdown(
            [r["prompt"] for r in records],
            [r["answer"] for r in records],
            numbers=[r["numbers"] for r in records],
            target=[r["target"] for r in records],
        )
        assert rewards == [1.0] * len(records)


def test_problems_are_distinct_and_the_splits_disjoint(generated):
    output_dir, _ = generated
    keys = [
        (tuple(r["numbers"]), r["target"]) for split in ("train", "test") for r in read(output_dir / f"{split}.jsonl")
    ]
    assert len(set(keys)) == len(keys) == 360


def test_intermediate_results_are_positive_integers_and_parentheses_keep_the_value():
    value, text, _ = make_countdown.combine((7, "7", ""), (3, "5-2", "-"), "-")
    assert (value, text) == (4, "7-(5-2)")
    value, text, _ = make_countdown.combine((12, "3*4", "*"), (6, "2*3", "*"), "/")
    assert (value, text) == (2, "3*4/(2*3)")
    assert make_countdown.combine((3, "3", ""), (3, "3", ""), "-") is None  # 0 is not positive
    assert make_countdown.combine((7, "7", ""), (2, "2", ""), "/") is None  # not an integer
    value, text, _ = make_countdown.combine((5, "2+3", "+"), (4, "4", ""), "*")
    assert (value, text) == (20, "(2+3)*4") and countdown_score(text, [2, 3, 4], 20) == 1.0


def test_same_seed_same_files_and_the_command_line(tmp_path):
    make_countdown.make_countdown(tmp_path / "a", num_train=40, num_test=10, seed=5)
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--output_dir",
            str(tmp_path / "b"),
            "--num_train",
            "40",
            "--num_test",
            "10",
            "--seed",
            "5",
        ],
        check=True,
        capture_output=True,
    )
    for split in ("train", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--output_dir",
            str(tmp_path / "c"),
            "--num_train",
            "50",
            "--count",
            "2",
            "--max_number",
            "3",
            "--max_target",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "found only" in result.stderr and "raise --max_number" in result.stderr
