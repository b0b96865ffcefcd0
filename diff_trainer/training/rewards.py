"""Reward functions for GRPO, in TRL's protocol: `fn(prompts, completions, **columns) -> list[float]`.

TRL calls every reward function with the batch's prompts, the decoded completions (strings, or for conversational
data a list of messages whose last one is the completion) and each other dataset column as a keyword argument
holding one value per completion. Built-ins for the project's checkable tasks, by name:

    arithmetic         1 when the completion equals the `answer` column (surrounding whitespace ignored), as
                       diff-eval-arithmetic scores it (make_arithmetic.py)
    countdown          1 when the completion is an expression of + − × ÷ and parentheses over the `numbers` column,
                       each used at most once, whose exact value is the `target` column (make_countdown.py);
                       parsed with `ast` and evaluated in fractions, never with eval
    sudoku             1 when the completion is a valid 4×4 grid agreeing with the `puzzle` column's givens
                       (make_sudoku.py); rows may be separated by '/', spaces or newlines
    <task>_format      1 when the completion has the shape of an answer of the task (an integer, an expression, a grid
                       of 16 digits 1-4), right or wrong

`load_reward(spec)` takes one of these names or `module:function` (`path/to/file.py:function` works too).
"""

import ast
import importlib
import importlib.util
import operator
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

RewardFunction = Callable[..., list[float]]

MAX_EXPRESSION_CHARS = 200  # longer Countdown answers are not parsed (nesting depth and number sizes stay small)
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
GRID_SEPARATORS = re.compile(r"[\s/|]+")
EXPRESSION_CHARACTERS = re.compile(r"[0-9+\-*/() ]+")


def completion_text(completion) -> str:
    """The text of one completion: a string, or the content of the last message of a conversational one."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


# ----------------------------------------------------------------------------------------------------
# Arithmetic


def parse_integer(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def arithmetic(prompts, completions, answer, **kwargs) -> list[float]:
    """Exact match with the `answer` column (diff-eval-arithmetic's rule)."""
    return [float(completion_text(c).strip() == a.strip()) for c, a in zip(completions, answer)]


# ----------------------------------------------------------------------------------------------------
# Countdown


def parse_expression(text: str) -> ast.expr | None:
    """The expression tree of `text` when it holds only non-negative integers, + − × ÷ and parentheses."""
    text = text.strip()
    if len(text) > MAX_EXPRESSION_CHARS or not EXPRESSION_CHARACTERS.fullmatch(text):
        return None
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        allowed = (
            isinstance(node, ast.BinOp)
            and type(node.op) in OPERATORS
            or isinstance(node, ast.Constant)
            and type(node.value) is int
            or isinstance(node, ast.operator)
        )
        if not allowed:
            return None
    return tree


def expression_value(tree: ast.expr) -> Fraction | None:
    """The exact value of a tree from `parse_expression` (None on division by zero)."""
    if isinstance(tree, ast.Constant):
        return Fraction(tree.value)
    left, right = expression_value(tree.left), expression_value(tree.right)
    if left is None or right is None or (isinstance(tree.op, ast.Div) and right == 0):
        return None
    return OPERATORS[type(tree.op)](left, right)


def expression_numbers(tree: ast.expr) -> list[int]:
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)]


def countdown_score(text: str, numbers: list[int], target: int) -> float:
    """1 when `text` reaches `target` with `numbers`, each used at most once; else 0."""
    tree = parse_expression(text)
    if tree is None or Counter(expression_numbers(tree)) - Counter(numbers):
        return 0.0
    return float(expression_value(tree) == target)


def countdown(prompts, completions, numbers, target, **kwargs) -> list[float]:
    """Countdown: reach the `target` column with the `numbers` column."""
    return [countdown_score(completion_text(c), n, t) for c, n, t in zip(completions, numbers, target)]


# ----------------------------------------------------------------------------------------------------
# 4×4 Sudoku


def parse_grid(text: str, blanks: str = "") -> list[int] | None:
    """The 16 cells of a 4×4 grid written row by row (separators '/', '|' or whitespace), 0 for a blank (a character
    of `blanks`); None when it is not such a grid."""
    cells = GRID_SEPARATORS.sub("", text.strip())
    if len(cells) != 16 or any(cell not in "1234" + blanks for cell in cells):
        return None
    return [0 if cell in blanks else int(cell) for cell in cells]


def sudoku_units() -> list[list[int]]:
    """The cell indices of the 4 rows, 4 columns and 4 boxes of a 4×4 grid."""
    rows = [[4 * r + c for c in range(4)] for r in range(4)]
    columns = [[4 * r + c for r in range(4)] for c in range(4)]
    boxes = [[4 * (2 * br + r) + 2 * bc + c for r in range(2) for c in range(2)] for br in range(2) for bc in range(2)]
    return rows + columns + boxes


SUDOKU_UNITS = sudoku_units()


def sudoku_score(text: str, puzzle: str) -> float:
    """1 when `text` is a valid completed 4×4 grid that keeps every given digit of `puzzle`; else 0."""
    grid, givens = parse_grid(text), parse_grid(puzzle, blanks=".0")
    if grid is None or givens is None:
        return 0.0
    valid = all(sorted(grid[i] for i in unit) == [1, 2, 3, 4] for unit in SUDOKU_UNITS)
    return float(valid and all(given in (0, cell) for given, cell in zip(givens, grid)))


def sudoku(prompts, completions, puzzle, **kwargs) -> list[float]:
    """4×4 Sudoku: solve the `puzzle` column."""
    return [sudoku_score(completion_text(c), p) for c, p in zip(completions, puzzle)]


# ----------------------------------------------------------------------------------------------------
# Format rewards and loading


def format_reward(task: str, parse: Callable[[str], object]) -> RewardFunction:
    """The reward `<task>_format`: 1 when `parse` accepts the completion."""

    def reward(prompts, completions, **kwargs) -> list[float]:
        return [float(parse(completion_text(c)) is not None) for c in completions]

    reward.__name__ = reward.__qualname__ = f"{task}_format"  # TRL logs rewards/<name>
    reward.__doc__ = f"1 when the completion has the shape of a {task} answer."
    return reward


BUILTIN_REWARDS: dict[str, RewardFunction] = {
    "arithmetic": arithmetic,
    "countdown": countdown,
    "sudoku": sudoku,
    "arithmetic_format": format_reward("arithmetic", parse_integer),
    "countdown_format": format_reward("countdown", parse_expression),
    "sudoku_format": format_reward("sudoku", parse_grid),
}


def load_reward(spec: str) -> RewardFunction:
    """A built-in reward by name, or `module:function` / `path/to/file.py:function`."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if ":" not in spec:
        raise ValueError(f"reward {spec!r}: not a built-in ({', '.join(BUILTIN_REWARDS)}) and not module:function.")
    module_name, name = spec.rsplit(":", 1)
    try:
        if module_name.endswith(".py"):
            location = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if location is None or not Path(module_name).is_file():
                raise FileNotFoundError(f"no file {module_name}")
            module = importlib.util.module_from_spec(location)
            location.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as error:
        raise ValueError(f"reward {spec!r}: cannot import {module_name} ({error}).") from error
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"reward {spec!r}: {module_name} has no function {name!r}.")
    return function


def call_reward(function: RewardFunction, prompts: list, completions: list, **columns) -> list[float]:
    """`function`'s rewards, checked: one number (or None, TRL's 'not applicable') per completion, else a ValueError
    naming the function and what it did."""
    name = getattr(function, "__name__", repr(function))
    try:
        rewards = function(prompts=prompts, completions=completions, **columns)
    except Exception as error:
        raise ValueError(
            f"reward {name} raised {type(error).__name__}: {error} (columns passed: {', '.join(columns) or 'none'})."
        ) from error
    if not isinstance(rewards, (list, tuple)) or len(rewards) != len(completions):
        size = len(rewards) if isinstance(rewards, (list, tuple)) else type(rewards).__name__
        raise ValueError(
            f"reward {name} returned {size} values for {len(completions)} completions; it must return "
            "a list with one float per completion."
        )
    bad = [value for value in rewards if value is not None and not isinstance(value, (int, float))]
    if bad:
        raise ValueError(f"reward {name} returned {type(bad[0]).__name__} {bad[0]!r}; rewards must be floats or None.")
    return [None if value is None else float(value) for value in rewards]
