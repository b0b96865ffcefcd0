"""benchmarks/recipes.py: the runner on a tiny recipe, and the table's mean / min / max on known values."""

import json
import math
import os
import sys

import pytest
import yaml

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
)
import common  # noqa: E402
import recipes  # noqa: E402

# one seed's "training": writes seed × the last argument (0.25, or 0.5 with --quick) to r.json in its directory
TINY = recipes.Recipe(
    what="a tiny recipe",
    steps=[
        recipes.Step(
            'python -c "import json, sys; '
            "json.dump({{'v': {seed} * float(sys.argv[-1])}}, open('{out}/r.json', 'w'))\" 0.25",
            quick="0.5",
        )
    ],
    outcomes=[recipes.Outcome("v", recipes.json_value("r.json", "v"))],
)


def test_summary_is_mean_min_max_of_the_finite_values():
    assert recipes.summary([0.25, 0.5, 0.9, math.nan]) == pytest.approx((0.55, 0.25, 0.9))
    assert recipes.summary_cell([0.25, 0.5, 0.9], percent=True) == "55.0% [25.0%, 90.0%]"
    assert recipes.summary_cell([10.0, 13.0], decimals=0) == "12 [10, 13]"  # 11.5 rounds to even
    assert all(math.isnan(value) for value in recipes.summary([math.nan]))


@pytest.mark.parametrize(
    "quick, values, mean_row",
    [(False, ["0.250", "0.750"], "0.500 [0.250, 0.750]"), (True, ["0.500", "1.500"], "1.000 [0.500, 1.500]")],
)
def test_the_runner_runs_each_seed_in_its_own_directory_and_tabulates(
    tmp_path, monkeypatch, capsys, quick, values, mean_row
):
    monkeypatch.setitem(recipes.RECIPES, "tiny", TINY)
    monkeypatch.setattr(common, "RESULTS_DIR", str(tmp_path / "results"))
    quick_flag = ["--quick"] if quick else []
    recipes.main(["tiny", "--seeds", "1", "3", "--output_root", str(tmp_path / "runs"), *quick_flag])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ") for line in lines if line.startswith("| ")]
    assert rows[0][:2] == ["| seed", "v"]
    assert [row[1] for row in rows[1:3]] == values
    assert rows[3][:2] == ["| mean [min, max] over 2 seeds", mean_row]
    for seed in (1, 3):
        assert (tmp_path / "runs" / "tiny" / f"seed{seed}" / "r.json").exists()
    assert (tmp_path / "results" / f"recipes_tiny{'_quick' if quick else ''}.md").exists()


def test_a_recipe_that_continues_another_names_the_command_to_run_first(tmp_path):
    with pytest.raises(SystemExit, match=r"run `python benchmarks/recipes.py arithmetic_sft --seeds 4 --quick` first"):
        recipes.main(["arithmetic_dpo", "--seeds", "4", "--quick", "--output_root", str(tmp_path)])


def test_every_recipe_seeds_each_training_run_and_writes_only_under_the_seed_directory():
    for name, recipe in recipes.RECIPES.items():
        for command in recipes.commands(recipe, 7, "outputs/recipes/x/seed7", quick=False):
            if any(f"{script}.py" in command for script in ("run_clm_diff", "run_diffusion_dpo", "run_diffusion_grpo")):
                assert "--seed 7" in command and "--output_dir outputs/recipes/x/seed7/" in command, (name, command)
            assert "outputs/" not in command.replace("outputs/recipes/x/seed7/", ""), (name, command)


def test_reuse_reads_a_finished_seed_back_with_its_times_only_for_the_same_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS_DIR", str(tmp_path / "results"))
    runs = ["--output_root", str(tmp_path / "runs")]
    monkeypatch.setitem(recipes.RECIPES, "tiny", TINY)
    recipes.main(["tiny", "--seeds", "2", *runs])
    capsys.readouterr()
    recipes.main(["tiny", "--seeds", "2", "--reuse", *runs])  # the same commands: nothing runs, the times are kept
    output = capsys.readouterr().out
    assert "seed 2: reused the outcomes" in output
    assert [row.split(" | ")[1:3] for row in output.splitlines() if row.startswith("| 2 ")][0][0] == "0.500"
    assert "| – |" not in output
    failing = recipes.Recipe("the same outcome, another command", [recipes.Step("false")], TINY.outcomes)
    monkeypatch.setitem(recipes.RECIPES, "tiny", failing)
    recipes.main(["tiny", "--seeds", "2", "--reuse", *runs])  # would fail if it ran; its times are unknown
    assert "| 2 | 0.500 | – | – |" in capsys.readouterr().out


def outcomes_read_from(recipe: str, files: dict, root) -> dict:
    """The recipe's outcomes, by name, read from hand-written `files` (path in the seed's directory -> content)."""
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return {outcome.name: outcome.read(str(root)) for outcome in recipes.RECIPES[recipe].outcomes}


def test_docstring_choice_reads_the_causal_and_the_adapted_scores(tmp_path):
    def harness(acc, mutual_info):  # diff-lm-eval's --output_path layout, with a stderr key that must not be taken
        scores = {"acc,none": acc, "acc_mutual_info_stderr,none": 0.04, "acc_mutual_info,none": mutual_info}
        return {"results": {"docstring_choice": scores}}

    files = {"lm_eval_causal.json": harness(0.44, 0.68), "lm_eval.json": harness(0.41, 0.70)}
    outcomes = outcomes_read_from("docstring_choice", files, tmp_path)
    assert outcomes == {"causal acc_mutual_info": 0.68, "causal acc": 0.44, "acc_mutual_info": 0.70, "acc": 0.41}


def test_browser_demo_reads_the_bound_and_the_word_share_in_the_fortunes(tmp_path):
    # "A", "day", "for", "decisions!!!!!" and "Or" are tokens of the first training fortune, written so there;
    # "decisions" without its "!!!!!" and the made-up "zqxv" are not: 5 of the 7 tokens.
    samples = [{"completion": "A day\nfor zqxv"}, {"completion": "decisions!!!!! Or decisions"}]
    files = {
        "browser_demo_causal/eval_results.json": {"perplexity": 31.5, "eval_loss": 3.45},
        "browser_demo/eval_results.json": {"eval_elbo_nll": 4.98, "eval_elbo_perplexity": 145.5},
        "samples.jsonl": "".join(json.dumps(sample) + "\n" for sample in samples),
    }
    outcomes = outcomes_read_from("browser_demo", files, tmp_path)
    assert outcomes["causal perplexity"] == 31.5 and outcomes["ELBO bound (nats/token)"] == 4.98
    assert outcomes["word share"] == pytest.approx(5 / 7)


def test_the_arithmetic_models_train_on_the_rows_their_evaluation_samples():
    """A masked-diffusion model sees only rows of its block_size; sampled in rows of another length, some seeds put the
    hundreds digit wrong (docs/arithmetic.md). The prompt is 7 tokens: "07+45=" in fixed width and <DFF>."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def config(path):
        with open(os.path.join(root, path), encoding="utf-8") as handle:
            return yaml.safe_load(handle)

    for name in ("arithmetic_sft", "arithmetic_dpo", "arithmetic_strong"):
        commands = [command.split() for command in recipes.commands(recipes.RECIPES[name], 0, "out", quick=False)]
        configs = [config(words[2]) for words in commands if words[2].endswith(".yaml")]
        rows = {settings.get("block_size", settings.get("max_length")) for settings in configs}  # DPO: max_length
        gen_lengths = {int(words[words.index("--gen_length") + 1]) for words in commands if "--gen_length" in words}
        assert rows == {len("07+45=") + 1 + gen_length for gen_length in gen_lengths}, (name, rows, gen_lengths)
