"""diff_trainer/training/rewards.py: the built-in rewards by hand, safe evaluation, loading specs, checked calls."""

import pytest

from diff_trainer.training.rewards import BUILTIN_REWARDS, call_reward, load_reward, parse_expression

SOLVED = "1234/3412/2143/4321"


def test_arithmetic_is_exact_match_ignoring_surrounding_whitespace():
    rewards = load_reward("arithmetic")(["12+7="] * 4, ["19", " 19\n", "019", "18"], answer=["19"] * 4)
    assert rewards == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("3*5+8", 23 == 23),
        ("(8-5)*3", False),
        ("8+5*3", True),
        ("5*3+8", True),
        ("8+15", False),  # 15 not given
        ("3*5+8+3", False),  # 3 used twice
        ("8*3-5+4/2", False),  # 4 and 2 not given
        ("(3+5/8)*8", False),
        ("8/(5-3)*3", False),
        ("8/(5-5)", False),
        ("23", False),
        ("3*5+8\n", True),
        ("", False),
        ("3 5 8", False),
        ("3**2+14", False),
        ("__import__('os')", False),
        ("0x3*5+8", False),
        ("-3+26", False),
        ("3*5+8=23", False),
        ("(" * 150 + "3" + ")" * 150, False),
    ],
)
def test_countdown_reaches_the_target_with_each_number_at_most_once(completion, reward):
    assert load_reward("countdown")(["make 23 from 3 5 8:"], [completion], numbers=[[3, 5, 8]], target=[23]) == [
        float(reward)
    ]


def test_countdown_evaluates_exactly_in_fractions():
    # 8 / 3 is not an integer, yet (8/3)*3 = 8 exactly; a float evaluation could miss 8 by rounding
    assert load_reward("countdown")([""], ["8/3*3+1"], numbers=[[1, 3, 3, 8]], target=[9]) == [1.0]
    assert load_reward("countdown")([""], ["1/3+1/3+1/3"], numbers=[[1, 1, 1, 3, 3, 3]], target=[1]) == [1.0]
    assert parse_expression("1/3") is not None and parse_expression("abs(3)") is None


@pytest.mark.parametrize(
    "completion, reward",
    [
        (SOLVED, True),
        ("1234 3412 2143 4321", True),
        ("1234\n3412\n2143\n4321\n", True),
        ("1234341221434321", True),
        ("1234/3412/2143/4312", False),  # last row breaks two columns
        ("1234/2341/3412/4123", False),  # rows and columns fine, boxes not
        ("2143/3412/1234/4321", False),  # valid grid, but a given digit changed
        ("1234/3412/2143/432", False),
        ("1234/3412/2143/4325", False),
        ("", False),
    ],
)
def test_sudoku_wants_a_valid_grid_that_keeps_the_givens(completion, reward):
    assert load_reward("sudoku")([""], [completion], puzzle=["1..4/3..2/..4./4.2."]) == [float(reward)]


def test_format_rewards_accept_answers_of_the_right_shape_right_or_wrong():
    assert load_reward("arithmetic_format")([""] * 3, ["-12", "12 ", "1 2"]) == [1.0, 1.0, 0.0]
    assert load_reward("countdown_format")([""] * 3, ["(1+2)*9", "9/0", "1+"]) == [1.0, 1.0, 0.0]
    assert load_reward("sudoku_format")([""] * 2, ["4321/4321/4321/4321", "1234/..../1234/1234"]) == [1.0, 0.0]
    assert [f.__name__ for f in BUILTIN_REWARDS.values()] == list(BUILTIN_REWARDS)  # TRL logs rewards/<name>


def test_conversational_completions_are_scored_on_the_last_message():
    completions = [[{"role": "assistant", "content": "19"}], [{"role": "assistant", "content": "20"}]]
    assert load_reward("arithmetic")(
        [[{"role": "user", "content": "12+7="}]] * 2, completions, answer=["19", "19"]
    ) == [1.0, 0.0]


def test_load_reward_imports_module_function_and_file_function(tmp_path):
    assert load_reward("diff_trainer.training.rewards:countdown") is BUILTIN_REWARDS["countdown"]
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, completions, **kwargs):\n    return [float(len(c)) for c in completions]\n"
    )
    assert load_reward(f"{tmp_path}/my_rewards.py:length")([""] * 2, ["ab", "abc"]) == [2.0, 3.0]


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "countdwn",
            r"reward 'countdwn': not a built-in \(arithmetic, countdown, sudoku, .*\) and not module:function",
        ),
        ("no_such_module_xyz:f", r"reward 'no_such_module_xyz:f': cannot import no_such_module_xyz"),
        ("diff_trainer.training.rewards:nothing", r"diff_trainer.training.rewards has no function 'nothing'"),
        ("missing/file.py:f", r"reward 'missing/file.py:f': cannot import missing/file.py \(no file"),
    ],
)
def test_bad_reward_specs_are_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        load_reward(spec)


def test_call_reward_checks_what_a_reward_function_returns():
    assert call_reward(load_reward("arithmetic"), ["1+1="] * 2, ["2", "3"], answer=["2", "2"]) == [1.0, 0.0]
    assert call_reward(lambda prompts, completions: [None, 1], ["", ""], ["", ""]) == [None, 1.0]

    def short(prompts, completions, **kwargs):
        return [1.0]

    with pytest.raises(ValueError, match="reward short returned 1 values for 2 completions"):
        call_reward(short, ["", ""], ["", ""])
    with pytest.raises(ValueError, match=r"reward countdown raised TypeError: .*target.* \(columns passed: answer\)"):
        call_reward(load_reward("countdown"), [""], ["1+2"], answer=["3"])
    with pytest.raises(ValueError, match="reward <lambda> returned str '1'; rewards must be floats or None"):
        call_reward(lambda prompts, completions: ["1"], [""], [""])
