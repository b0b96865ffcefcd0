"""Make a 4×4 Sudoku task for RL with verifiable rewards: fill the blanks so every row, column and 2×2 box holds 1-4.

A puzzle is one of the 288 valid grids with --min_blanks..--max_blanks cells blanked ('.'), removed one at a time
only while the solution stays unique. Grids are written row by row with '/' between rows. Puzzles are distinct, so
train and test never share one; every answer is checked with the `sudoku` reward of diff_trainer/training/rewards.py.
Output in --output_dir:

  train.jsonl, test.jsonl   {"text": "sudoku 1.3./..4./.2../4..1:<DFF>1234/3412/2143/4321",
                             "prompt": "sudoku 1.3./..4./.2../4..1:", "answer": "1234/3412/2143/4321",
                             "puzzle": "1.3./..4./.2../4..1"}

    python data_scripts/make_sudoku.py --output_dir data/sudoku
    python data_scripts/make_sudoku.py --output_dir data/sudoku_hard --min_blanks 9 --max_blanks 11
"""

import argparse
import random
import sys
from pathlib import Path

try:
    from diff_trainer.data.io import write_jsonl
    from diff_trainer.training.rewards import SUDOKU_UNITS, sudoku_score
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.io import write_jsonl
    from diff_trainer.training.rewards import SUDOKU_UNITS, sudoku_score

DFF = "<DFF>"
UNITS_OF_CELL = [[unit for unit in SUDOKU_UNITS if cell in unit] for cell in range(16)]
ATTEMPTS_PER_PUZZLE = 100


def solutions(cells: list[int], limit: int | None = None) -> list[list[int]]:
    """The completions of a grid (0 = blank) by backtracking over the first blank cell, at most `limit` of them."""
    if 0 not in cells:
        return [list(cells)]
    blank = cells.index(0)
    used = {cells[i] for unit in UNITS_OF_CELL[blank] for i in unit}
    found = []
    for digit in range(1, 5):
        if digit not in used:
            cells[blank] = digit
            found += solutions(cells, None if limit is None else limit - len(found))
            cells[blank] = 0
            if limit is not None and len(found) >= limit:
                break
    return found


ALL_GRIDS = solutions([0] * 16)  # the 288 valid 4×4 grids


def render(cells: list[int]) -> str:
    text = "".join("." if cell == 0 else str(cell) for cell in cells)
    return "/".join(text[row : row + 4] for row in range(0, 16, 4))


def random_puzzle(blanks: int, rng: random.Random) -> tuple[list[int], list[int]] | None:
    """(puzzle, solution): a random grid with `blanks` cells removed in random order, each only while the solution
    stays unique; None when no more could be removed."""
    solution = rng.choice(ALL_GRIDS)
    puzzle = list(solution)
    for cell in rng.sample(range(16), 16):
        if puzzle.count(0) == blanks:
            return puzzle, solution
        puzzle[cell] = 0
        if len(solutions(list(puzzle), limit=2)) > 1:
            puzzle[cell] = solution[cell]
    return (puzzle, solution) if puzzle.count(0) == blanks else None


def sudoku_record(puzzle: list[int], solution: list[int]) -> dict[str, str]:
    grid, answer = render(puzzle), render(solution)
    if sudoku_score(answer, grid) != 1.0:  # the reward is the definition of a right answer
        raise AssertionError(f"{answer} does not solve {grid}")
    prompt = f"sudoku {grid}:"
    return {"text": f"{prompt}{DFF}{answer}", "prompt": prompt, "answer": answer, "puzzle": grid}


def sample_puzzles(total: int, min_blanks: int, max_blanks: int, rng: random.Random) -> list[dict[str, str]]:
    """`total` distinct puzzles with unique solutions."""
    records, seen = [], set()
    for _ in range(total * ATTEMPTS_PER_PUZZLE):
        if len(records) == total:
            return records
        made = random_puzzle(rng.randint(min_blanks, max_blanks), rng)
        if made is None or tuple(made[0]) in seen:
            continue
        seen.add(tuple(made[0]))
        records.append(sudoku_record(*made))
    raise ValueError(
        f"found only {len(records)} distinct puzzles of the {total} asked for; widen "
        "--min_blanks..--max_blanks or ask for fewer"
    )


def make_sudoku(
    output_dir: str | Path,
    num_train: int = 5000,
    num_test: int = 500,
    min_blanks: int = 4,
    max_blanks: int = 10,
    seed: int = 0,
) -> dict[str, int]:
    """Write train.jsonl and test.jsonl into `output_dir`; return the records per file."""
    if not 1 <= min_blanks <= max_blanks <= 16:
        raise ValueError("need 1 <= --min_blanks <= --max_blanks <= 16")
    records = sample_puzzles(num_train + num_test, min_blanks, max_blanks, random.Random(seed))
    output_dir = Path(output_dir)
    return {
        f"{split}.jsonl": write_jsonl(rows, output_dir / f"{split}.jsonl", total=len(rows))
        for split, rows in (("train", records[:num_train]), ("test", records[num_train:]))
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="directory for the .jsonl files")
    parser.add_argument("--num_train", type=int, default=5000, help="training puzzles (default: %(default)s)")
    parser.add_argument("--num_test", type=int, default=500, help="test puzzles (default: %(default)s)")
    parser.add_argument("--min_blanks", type=int, default=4, help="fewest blank cells (default: %(default)s)")
    parser.add_argument("--max_blanks", type=int, default=10, help="most blank cells (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_test) < 0:
        parser.error("--num_train and --num_test must be >= 0")
    try:
        counts = make_sudoku(
            args.output_dir, args.num_train, args.num_test, args.min_blanks, args.max_blanks, args.seed
        )
    except ValueError as error:
        parser.error(str(error))
    print(", ".join(f"{name}: {count}" for name, count in counts.items()), f"written to {args.output_dir}")


if __name__ == "__main__":
    main()
