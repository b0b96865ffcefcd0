"""Make a Countdown task for RL with verifiable rewards: reach a target with given numbers and + - * /.

Each problem has --count numbers from 1..--max_number (repeats allowed) and a target in 1..--max_target that some
expression using every number once reaches, with every intermediate result a positive integer (the game's rule).
A completion may use each number at most once; the `countdown` reward of diff_trainer/training/rewards.py checks it, and
every written answer is checked with it. Problems (the multiset of numbers and the target) are distinct, so train
and test never share one. Output in --output_dir:

  train.jsonl, test.jsonl   {"text": "make 22 from 3 5 8:<DFF>3*5+8-1", "prompt": "make 22 from 3 5 8:",
                             "answer": "...", "numbers": [3, 5, 8], "target": 22}

    python data_scripts/make_countdown.py --output_dir data/countdown
    python data_scripts/make_countdown.py --output_dir data/countdown4 --count 4 --max_target 200
"""

import argparse
import random
import sys
from pathlib import Path

try:
    from diff_trainer.data.io import write_jsonl
    from diff_trainer.training.rewards import countdown_score
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.io import write_jsonl
    from diff_trainer.training.rewards import countdown_score

DFF = "<DFF>"
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
ATTEMPTS_PER_PROBLEM = 200


def combine(left: tuple[int, str, str], right: tuple[int, str, str], op: str) -> tuple[int, str, str] | None:
    """(value, text, top operator) of `left op right` when the result is a positive integer, else None.

    Parentheses only where precedence needs them: around a lower-precedence side, and around a right side of equal
    precedence under - and / (a-(b-c), a/(b*c)).
    """
    (a, left_text, left_op), (b, right_text, right_op) = left, right
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b and a % b == 0 else 0}[op]
    if value <= 0:
        return None
    if left_op and PRECEDENCE[left_op] < PRECEDENCE[op]:
        left_text = f"({left_text})"
    if right_op and (PRECEDENCE[right_op] < PRECEDENCE[op] or PRECEDENCE[right_op] == PRECEDENCE[op] and op in "-/"):
        right_text = f"({right_text})"
    return value, f"{left_text}{op}{right_text}", op


def random_solution(numbers: list[int], rng: random.Random) -> tuple[int, str] | None:
    """Combine random pairs with random operators until one value is left: (target, expression), or None when a
    step had no operator giving a positive integer."""
    items = [(n, str(n), "") for n in numbers]
    while len(items) > 1:
        first, second = rng.sample(range(len(items)), 2)
        left, right = items[first], items[second]
        results = [r for op in "+-*/" if (r := combine(left, right, op)) is not None]
        if not results:
            return None
        items = [item for index, item in enumerate(items) if index not in (first, second)] + [rng.choice(results)]
    return items[0][0], items[0][1]


def countdown_record(numbers: list[int], target: int, expression: str) -> dict:
    prompt = f"make {target} from {' '.join(map(str, numbers))}:"
    if countdown_score(expression, numbers, target) != 1.0:  # the reward is the definition of a right answer
        raise AssertionError(f"{expression} does not reach {target} with {numbers}")
    return {
        "text": f"{prompt}{DFF}{expression}",
        "prompt": prompt,
        "answer": expression,
        "numbers": numbers,
        "target": target,
    }


def sample_problems(total: int, count: int, max_number: int, max_target: int, rng: random.Random) -> list[dict]:
    """`total` distinct problems (numbers as a multiset, target), each with one solution."""
    records, seen = [], set()
    for _ in range(total * ATTEMPTS_PER_PROBLEM):
        if len(records) == total:
            return records
        numbers = sorted(rng.randint(1, max_number) for _ in range(count))
        solution = random_solution(numbers, rng)
        if solution is None or not 1 <= solution[0] <= max_target or (tuple(numbers), solution[0]) in seen:
            continue
        seen.add((tuple(numbers), solution[0]))
        records.append(countdown_record(numbers, *solution))
    raise ValueError(
        f"found only {len(records)} distinct problems of the {total} asked for; raise --max_number or "
        "--max_target, or ask for fewer"
    )


def make_countdown(
    output_dir: str | Path,
    num_train: int = 5000,
    num_test: int = 500,
    count: int = 3,
    max_number: int = 20,
    max_target: int = 100,
    seed: int = 0,
) -> dict[str, int]:
    """Write train.jsonl and test.jsonl into `output_dir`; return the records per file."""
    if count < 2:
        raise ValueError("--count must be at least 2")
    records = sample_problems(num_train + num_test, count, max_number, max_target, random.Random(seed))
    output_dir = Path(output_dir)
    return {
        f"{split}.jsonl": write_jsonl(rows, output_dir / f"{split}.jsonl", total=len(rows))
        for split, rows in (("train", records[:num_train]), ("test", records[num_train:]))
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="directory for the .jsonl files")
    parser.add_argument("--num_train", type=int, default=5000, help="training problems (default: %(default)s)")
    parser.add_argument("--num_test", type=int, default=500, help="test problems (default: %(default)s)")
    parser.add_argument("--count", type=int, default=3, help="numbers per problem (default: %(default)s)")
    parser.add_argument("--max_number", type=int, default=20, help="numbers are drawn from 1..max_number")
    parser.add_argument("--max_target", type=int, default=100, help="targets lie in 1..max_target")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_test) < 0 or min(args.max_number, args.max_target) < 1:
        parser.error("--num_train and --num_test must be >= 0, --max_number and --max_target >= 1")
    try:
        counts = make_countdown(
            args.output_dir, args.num_train, args.num_test, args.count, args.max_number, args.max_target, args.seed
        )
    except ValueError as error:
        parser.error(str(error))
    print(", ".join(f"{name}: {count}" for name, count in counts.items()), f"written to {args.output_dir}")


if __name__ == "__main__":
    main()
