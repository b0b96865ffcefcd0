"""data_scripts/make_sudoku.py: unique solutions the reward accepts, blank counts, distinct puzzles, seeded files."""

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from diff_trainer.training.rewards import parse_grid, sudoku

SCRIPT = Path(__file__).resolve().parents[2] / "data_scripts" / "make_sudoku.py"
_spec = importlib.util.spec_from_file_location("make_sudoku", SCRIPT)
make_sudoku = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_sudoku)


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def grids_solving(puzzle):
    """The grids among all 288 that the reward accepts as solutions of `puzzle`."""
    grids = ["".join(map(str, grid)) for grid in make_sudoku.ALL_GRIDS]
    return [
        grid
        for grid, reward in zip(grids, sudoku([""] * len(grids), grids, puzzle=[puzzle] * len(grids)))
        if reward == 1.0
    ]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("sudoku")
    counts = make_sudoku.make_sudoku(output_dir, num_train=200, num_test=40, min_blanks=5, max_blanks=8, seed=3)
    return output_dir, counts


def test_there_are_288_grids_and_the_reward_accepts_exactly_those():
    grids = {"".join(map(str, grid)) for grid in make_sudoku.ALL_GRIDS}
    assert len(grids) == 288 and grids_solving("..../..../..../....") == sorted(grids)
    rows = ["".join(p) for p in itertools.permutations("1234")]  # every grid of permutation rows starting 1234
    candidates = ["1234" + "".join(rest) for rest in itertools.product(rows, repeat=3)]
    accepted = sudoku([""] * len(candidates), candidates, puzzle=["1234/..../..../...."] * len(candidates))
    assert {c for c, reward in zip(candidates, accepted) if reward == 1.0} == {g for g in grids if g[:4] == "1234"}


def test_every_puzzle_has_one_solution_the_written_answer(generated):
    output_dir, counts = generated
    assert counts == {"train.jsonl": 200, "test.jsonl": 40}
    for split in ("train", "test"):
        for record in read(output_dir / f"{split}.jsonl"):
            puzzle = record["puzzle"]
            assert 5 <= puzzle.count(".") <= 8 and parse_grid(puzzle, blanks=".") is not None
            assert record["prompt"] == f"sudoku {puzzle}:"
            assert record["text"] == f"{record['prompt']}<DFF>{record['answer']}"
            assert grids_solving(puzzle) == [record["answer"].replace("/", "")]


def test_puzzles_are_distinct_and_the_splits_disjoint(generated):
    output_dir, _ = generated
    puzzles = [r["puzzle"] for split in ("train", "test") for r in read(output_dir / f"{split}.jsonl")]
    assert len(set(puzzles)) == len(puzzles) == 240


def test_same_seed_same_files_and_the_command_line(tmp_path):
    make_sudoku.make_sudoku(tmp_path / "a", num_train=30, num_test=10, seed=5)
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--output_dir",
            str(tmp_path / "b"),
            "--num_train",
            "30",
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
        [sys.executable, str(SCRIPT), "--output_dir", str(tmp_path / "c"), "--min_blanks", "9", "--max_blanks", "3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--min_blanks <= --max_blanks" in result.stderr
