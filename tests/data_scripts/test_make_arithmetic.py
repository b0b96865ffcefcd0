"""data_scripts/make_arithmetic.py: correct answers, disjoint splits, seeded determinism, valid preference pairs."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "data_scripts" / "make_arithmetic.py"
_spec = importlib.util.spec_from_file_location("make_arithmetic", SCRIPT)
arithmetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arithmetic)

PROMPT = re.compile(r"^(\d+)([+*-])(\d+)=$")


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def solve(prompt):
    a, operator, b = PROMPT.match(prompt).groups()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[operator]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("arithmetic")
    counts = arithmetic.make_arithmetic(
        output_dir, num_train=300, num_test=60, max_operand=15, seed=3, preferences=True
    )
    return output_dir, counts


def test_every_record_is_well_formed_and_correct(generated):
    output_dir, counts = generated
    for split, expected_count in (("train", 300), ("test", 60)):
        records = read(output_dir / f"{split}.jsonl")
        assert len(records) == expected_count == counts[f"{split}.jsonl"]
        for record in records:
            assert set(record) == {"text", "prompt", "answer"}
            assert record["text"] == f"{record['prompt']}<DFF>{record['answer']}"
            a, _, b = PROMPT.match(record["prompt"]).groups()
            assert 0 <= int(a) <= 15 and 0 <= int(b) <= 15
            assert int(record["answer"]) == solve(record["prompt"])


def test_train_and_test_prompts_are_disjoint_and_unique(generated):
    output_dir, _ = generated
    train = [record["prompt"] for record in read(output_dir / "train.jsonl")]
    test = [record["prompt"] for record in read(output_dir / "test.jsonl")]
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_exhausting_the_problem_space_covers_every_problem_once(tmp_path):
    # operands 0..3 and two operators: 2 * 4 * 4 = 32 problems in all
    arithmetic.make_arithmetic(tmp_path, num_train=24, num_test=8, max_operand=3, operators="+-")
    prompts = [r["prompt"] for split in ("train", "test") for r in read(tmp_path / f"{split}.jsonl")]
    expected = {f"{a}{op}{b}=" for op in "+-" for a in range(4) for b in range(4)}
    assert len(prompts) == 32 and set(prompts) == expected


def test_asking_for_more_problems_than_exist_fails(tmp_path):
    with pytest.raises(ValueError, match="only 32 exist"):
        arithmetic.make_arithmetic(tmp_path, num_train=30, num_test=3, max_operand=3, operators="+-")


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    names = ("train.jsonl", "test.jsonl", "train_pairs.jsonl", "test_pairs.jsonl")
    contents = {}
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        arithmetic.make_arithmetic(
            tmp_path / run, num_train=50, num_test=10, max_operand=20, seed=seed, preferences=True
        )
        contents[run] = [(tmp_path / run / name).read_bytes() for name in names]
    assert contents["a"] == contents["b"]
    assert contents["a"][0] != contents["c"][0]


def test_preference_pairs_match_the_problems_and_reject_a_wrong_answer(generated):
    output_dir, counts = generated
    for split in ("train", "test"):
        problems = read(output_dir / f"{split}.jsonl")
        pairs = read(output_dir / f"{split}_pairs.jsonl")
        assert len(pairs) == len(problems) == counts[f"{split}_pairs.jsonl"]
        for problem, pair in zip(problems, pairs):
            assert set(pair) == {"prompt", "chosen", "rejected"}
            assert pair["prompt"] == problem["prompt"] and pair["chosen"] == problem["answer"]
            assert pair["rejected"] != pair["chosen"]
            a, operator, b = PROMPT.match(pair["prompt"]).groups()
            assert int(pair["rejected"]) in arithmetic.plausible_wrong_answers(int(a), operator, int(b))


@pytest.mark.parametrize(
    "a, operator, b, expected",
    [
        # 19: 20, 18, 29, 9, digits swapped 91, 12-7=5, 12*7=84
        (12, "+", 7, [5, 9, 18, 20, 29, 84, 91]),
        # 9: 10, 8, 19, -1; a single digit swapped is 9 itself; 3+3=6, 3-3=0
        (3, "*", 3, [-1, 0, 6, 8, 10, 19]),
        # -9: -8, -10, 1, -19; swapped is -9 itself; 3+12=15, 3*12=36
        (3, "-", 12, [-19, -10, -8, 1, 15, 36]),
    ],
)
def test_plausible_wrong_answers_by_hand(a, operator, b, expected):
    assert arithmetic.plausible_wrong_answers(a, operator, b) == expected


def test_operators_flag(tmp_path):
    assert arithmetic.parse_operators("*+*") == ["*", "+"]
    with pytest.raises(ValueError):
        arithmetic.parse_operators("+/")
    arithmetic.main(["--output_dir", str(tmp_path), "--num_train", "20", "--num_test", "5", "--operators=-"])
    assert all("-" in record["prompt"] for record in read(tmp_path / "train.jsonl"))
    assert not (tmp_path / "train_pairs.jsonl").exists()


def test_help_runs_from_the_repo_root():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], cwd=SCRIPT.parents[1], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--preferences" in result.stdout


def test_fixed_width_pads_operands_and_answers_to_one_layout(tmp_path):
    arithmetic.make_arithmetic(
        tmp_path, num_train=150, num_test=50, max_operand=99, operators="+-", seed=1, preferences=True, fixed_width=True
    )
    records = read(tmp_path / "train.jsonl") + read(tmp_path / "test.jsonl")
    for record in records:
        assert re.fullmatch(r"\d\d[+-]\d\d=", record["prompt"])
        assert len(record["answer"]) == 3 and int(record["answer"]) == solve(record["prompt"])
    assert arithmetic.problem_record(7, "+", 5, arithmetic.Layout.fixed(99, ["+", "-"])) == {
        "text": "07+05=<DFF>012",
        "prompt": "07+05=",
        "answer": "012",
    }
    assert arithmetic.Layout.fixed(99, ["-"]).number(-5) == "-05"  # widest answer "-99": three characters
    for pair in read(tmp_path / "train_pairs.jsonl"):
        assert len(pair["chosen"]) == len(pair["rejected"]) == 3 and pair["chosen"] != pair["rejected"]
        assert int(pair["chosen"]) == solve(pair["prompt"])
