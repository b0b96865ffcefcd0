"""Make a small, checkable integer arithmetic task: `12+7=<DFF>19` records for samplers, evaluation and DPO.

Problems are `a OP b` with 0 <= a, b <= --max_operand and OP one of --operators; subtraction may go negative.
They are drawn without replacement, so train and test never share a prompt. Output in --output_dir:

  train.jsonl, test.jsonl              {"text": "12+7=<DFF>19", "prompt": "12+7=", "answer": "19"}
  train_pairs.jsonl, test_pairs.jsonl  with --preferences: {"prompt": "12+7=", "chosen": "19", "rejected": "18"}

With --fixed_width, operands and answers are zero-padded to the widest value they can take ("12+07=<DFF>019"):
every digit then sits at the same position in every problem, which a small model learns much sooner.

A rejected answer is a plausible mistake, never the right one: off by one or ten, the digits swapped, or the
result of another operator on the same operands.

    python data_scripts/make_arithmetic.py --output_dir data/arithmetic --preferences
    python data_scripts/make_arithmetic.py --output_dir data/add_sub --operators=+- --max_operand 20
    python data_scripts/make_arithmetic.py --output_dir data/arithmetic --operators=+ --fixed_width
"""

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    from diff_trainer.data.io import write_jsonl
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.io import write_jsonl

DFF = "<DFF>"
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def parse_operators(spec: str) -> list[str]:
    """`"+-*"` -> `["+", "-", "*"]`, in the given order, without repeats."""
    unknown = sorted(set(spec) - set(OPERATIONS))
    if unknown or not spec:
        raise ValueError(f"operators must be a non-empty string of {''.join(OPERATIONS)}, got {spec!r}")
    return list(dict.fromkeys(spec))


def sample_problems(count: int, max_operand: int, operators: list[str], rng: random.Random):
    """`count` distinct (a, op, b) triples, uniformly without replacement from the whole problem space."""
    operand_values = max_operand + 1
    space = len(operators) * operand_values**2
    if count > space:
        raise ValueError(f"asked for {count} distinct problems but only {space} exist; raise --max_operand")
    problems = []
    for index in rng.sample(range(space), count):
        operator_index, pair = divmod(index, operand_values**2)
        a, b = divmod(pair, operand_values)
        problems.append((a, operators[operator_index], b))
    return problems


def answer(a: int, operator: str, b: int) -> int:
    return OPERATIONS[operator](a, b)


@dataclass(frozen=True)
class Layout:
    """How numbers are written: as they are (widths 0), or zero-padded to fixed operand and answer widths."""

    operand_width: int = 0
    answer_width: int = 0

    @classmethod
    def fixed(cls, max_operand: int, operators: list[str]) -> "Layout":
        """Widths that fit every operand and every answer (a minus sign counts as a character)."""
        extremes = [answer(a, op, b) for op in operators for a in (0, max_operand) for b in (0, max_operand)]
        return cls(len(str(max_operand)), max(len(str(value)) for value in extremes))

    def prompt(self, a: int, operator: str, b: int) -> str:
        return f"{a:0{self.operand_width}d}{operator}{b:0{self.operand_width}d}="

    def number(self, value: int) -> str:
        return f"{value:0{self.answer_width}d}"

    def fits(self, value: int) -> bool:
        return not self.answer_width or len(self.number(value)) == self.answer_width


def problem_record(a: int, operator: str, b: int, layout: Layout = Layout()) -> dict[str, str]:
    prompt, result = layout.prompt(a, operator, b), layout.number(answer(a, operator, b))
    return {"text": f"{prompt}{DFF}{result}", "prompt": prompt, "answer": result}


def plausible_wrong_answers(a: int, operator: str, b: int, layout: Layout = Layout()) -> list[int]:
    """Typical slips for `a op b`: off by one or ten, digits swapped, another operator's result; never correct.

    With a fixed layout, only slips that fit its answer width.
    """
    correct = answer(a, operator, b)
    swapped = int(str(abs(correct))[::-1]) * (-1 if correct < 0 else 1)
    other_operators = [OPERATIONS[other](a, b) for other in OPERATIONS if other != operator]
    candidates = [correct + 1, correct - 1, correct + 10, correct - 10, swapped, *other_operators]
    return sorted({value for value in candidates if value != correct and layout.fits(value)})


def preference_pair(a: int, operator: str, b: int, rng: random.Random, layout: Layout = Layout()) -> dict[str, str]:
    rejected = rng.choice(plausible_wrong_answers(a, operator, b, layout))
    return {
        "prompt": layout.prompt(a, operator, b),
        "chosen": layout.number(answer(a, operator, b)),
        "rejected": layout.number(rejected),
    }


def make_arithmetic(
    output_dir: str | Path,
    num_train: int = 10000,
    num_test: int = 1000,
    max_operand: int = 99,
    operators: str = "+-*",
    seed: int = 0,
    preferences: bool = False,
    fixed_width: bool = False,
) -> dict[str, int]:
    """Write the train/test files (and preference pairs) into `output_dir`; return the records per file."""
    rng = random.Random(seed)
    operator_list = parse_operators(operators)
    layout = Layout.fixed(max_operand, operator_list) if fixed_width else Layout()
    problems = sample_problems(num_train + num_test, max_operand, operator_list, rng)
    splits = {"train": problems[:num_train], "test": problems[num_train:]}
    output_dir = Path(output_dir)
    counts = {}
    for split, split_problems in splits.items():
        counts[f"{split}.jsonl"] = write_jsonl(
            (problem_record(*problem, layout) for problem in split_problems),
            output_dir / f"{split}.jsonl",
            total=len(split_problems),
        )
        if preferences:
            pairs = [preference_pair(*problem, rng, layout) for problem in split_problems]
            counts[f"{split}_pairs.jsonl"] = write_jsonl(pairs, output_dir / f"{split}_pairs.jsonl", total=len(pairs))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="directory for the .jsonl files")
    parser.add_argument("--num_train", type=int, default=10000, help="training problems (default: %(default)s)")
    parser.add_argument("--num_test", type=int, default=1000, help="test problems (default: %(default)s)")
    parser.add_argument(
        "--max_operand", type=int, default=99, help="operands are drawn from 0..max_operand (default: %(default)s)"
    )
    parser.add_argument(
        "--operators",
        default="+-*",
        help="operators to use, as one string; write --operators=-* when it starts with '-' (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    parser.add_argument(
        "--preferences",
        action="store_true",
        help="also write train_pairs.jsonl / test_pairs.jsonl with chosen and rejected answers",
    )
    parser.add_argument(
        "--fixed_width", action="store_true", help="zero-pad operands and answers to fixed widths (12+07=<DFF>019)"
    )
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_test, args.max_operand) < 0:
        parser.error("--num_train, --num_test and --max_operand must be >= 0")
    try:
        counts = make_arithmetic(
            args.output_dir,
            args.num_train,
            args.num_test,
            args.max_operand,
            args.operators,
            args.seed,
            args.preferences,
            args.fixed_width,
        )
    except ValueError as error:
        parser.error(str(error))
    print(", ".join(f"{name}: {count}" for name, count in counts.items()), f"written to {args.output_dir}")


if __name__ == "__main__":
    main()
