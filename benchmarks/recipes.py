"""Re-run a recipe of the README or a guide over seeds and print its outcomes as "mean [min, max] over N seeds".

    python benchmarks/recipes.py quickstart                  # seeds 0 1 2
    python benchmarks/recipes.py arithmetic_sft --seeds 0 1 2 3
    python benchmarks/recipes.py quickstart --seeds 0 --quick   # a few steps: checks the commands, not the numbers

A recipe is data: the commands the docs give (with `--seed S` added and every output moved under
outputs/recipes/RECIPE/seedS/, so no run overwrites the docs' outputs or another seed's) and, per outcome, how to read
it from what the commands wrote. Each seed's commands run in order from the repository root; per seed the table shows
the outcomes and the wall and CPU seconds of all its commands (CPU time of the child processes: it hardly moves when
other jobs share the cores, wall time does). `--quick` appends each command's short-run flags and writes under
outputs/recipes_quick/. `--reuse` reads back a seed whose directory already holds every outcome instead of running
it again (its times are those its run recorded). The table also goes to benchmarks/results/recipes_RECIPE[_quick].md.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from common import REPO_ROOT, markdown_table, results_file, stopwatch
from diff_trainer.metrics.words import corpus_words, word_share

QUICK_TRAIN = "--max_steps 4 --eval_steps 2 --save_steps 2 --max_eval_samples 4"
SAMPLER = "--gen_length 64 --steps 64 --block_length 32 --temperature 0.7 --seed 0"  # docs/sampling.md's first command
CHAT_SAMPLER = "--gen_length 48 --block_length 8 --seed 0"  # docs/chat.md: greedy, one token per step
CHAT_CONVERSATIONS = 24  # of the 77 held-out conversations (114 assistant turns), to keep the sampling short
WORD_SHARE_PROMPTS = 16  # the first validation signatures, the prompts of the word-share samples
STDLIB = "data/stdlib_docstrings"
FORTUNES = "data/fortunes"
BROWSER_QUICK = "--max_steps 4 --eval_steps 2 --save_steps 2"  # all 48 validation fortunes: 4 fill no packed row
BROWSER_SAMPLER = (  # docs/browser.md's diff-generate flags, 16 samples of its prompt
    '--prompt "You will" --samples 16 --gen_length 48 --steps 48 --block_length 16 --temperature 0.7 '
    "--remasking low_confidence --seed 0"
)


@dataclass(frozen=True)
class Step:
    """One command, with {seed} and {out} (the seed's directory) filled in; `quick` is appended under --quick."""

    command: str
    quick: str = ""


@dataclass(frozen=True)
class Outcome:
    """A number a recipe produces: `read(out)` takes the seed's directory; `percent` prints it ×100 with a %."""

    name: str
    read: Callable[[str], float]
    percent: bool = False


@dataclass(frozen=True)
class Recipe:
    what: str
    steps: list[Step]
    outcomes: list[Outcome]
    prepare: Callable[[str], None] | None = None  # writes the seed's inputs (e.g. a prompt file) before the steps
    needs: list[str] = field(default_factory=list)  # recipes whose outputs for the same seed this one reads


def json_value(path: str, key: str) -> Callable[[str], float]:
    """The outcome `key` of the JSON file `path` (relative to the seed's directory)."""

    def read(out: str) -> float:
        with open(os.path.join(out, path), encoding="utf-8") as handle:
            return float(json.load(handle)[key])

    return read


def jsonl_records(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def exact_match(path: str) -> Callable[[str], float]:
    """The share of correct answers in a diff-eval-arithmetic `--output` file."""

    def read(out: str) -> float:
        records = jsonl_records(os.path.join(out, path))
        return sum(record["correct"] for record in records) / len(records)

    return read


def lm_eval_metric(path: str, task: str, metric: str) -> Callable[[str], float]:
    """A metric of one task in a diff-lm-eval `--output_path` file."""

    def read(out: str) -> float:
        with open(os.path.join(out, path), encoding="utf-8") as handle:
            results = json.load(handle)["results"][task]
        return float(next(value for key, value in results.items() if key.split(",")[0] == metric))

    return read


def corpus_texts(corpus: str, split: str) -> list[str]:
    """The `text` of every record of a bundled corpus's split (e.g. data/fortunes/train.jsonl.zst)."""
    from datasets import load_dataset

    return load_dataset("json", data_files=os.path.join(REPO_ROOT, corpus, f"{split}.jsonl.zst"), split="train")["text"]


def stdlib_records(split: str) -> list[str]:
    return corpus_texts(STDLIB, split)


def write_validation_prompts(out: str) -> None:
    """prompts.txt: the signatures (text before <DFF>) of the first validation records."""
    prompts = [text.split("<DFF>")[0] for text in stdlib_records("validation")[:WORD_SHARE_PROMPTS]]
    with open(os.path.join(out, "prompts.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(prompts) + "\n")


def training_word_share(path: str, training_texts: Callable[[], Iterable[str]]) -> Callable[[str], float]:
    """The share of the completions' whitespace-separated tokens that occur in the training text."""

    def read(out: str) -> float:
        words = corpus_words(training_texts())
        return word_share((record["completion"] for record in jsonl_records(os.path.join(out, path))), words)

    return read


def stdlib_word_share(path: str) -> Callable[[str], float]:
    """Word share in the stdlib corpus's signatures and docstrings (the <DFF> marker separates words)."""
    return training_word_share(path, lambda: (text.replace("<DFF>", " ") for text in stdlib_records("train")))


def fortunes_word_share(path: str) -> Callable[[str], float]:
    """Word share in the fortunes' training text."""
    return training_word_share(path, lambda: corpus_texts(FORTUNES, "train"))


def arithmetic_eval(model: str, output: str) -> Step:
    return Step(
        f"diff-eval-arithmetic --model {{out}}/{model} --test_file {{out}}/data/test.jsonl --gen_length 4 "
        f"--max_samples 500 --batch_size 250 --output {{out}}/{output}",
        quick="--max_samples 16",
    )


ARITHMETIC_DATA = Step(
    "python data_scripts/make_arithmetic.py --output_dir {out}/data --operators=+ --max_operand 99 "
    "--num_train 9000 --num_test 1000 --fixed_width --preferences"
)

RECIPES = {
    "quickstart": Recipe(
        what="README quick start: configs/demo_causal.yaml, then configs/demo_adapted.yaml from it, then "
        f"diff-generate ({SAMPLER}) on the first {WORD_SHARE_PROMPTS} validation signatures",
        prepare=write_validation_prompts,
        steps=[
            Step(
                "python run_clm_diff.py configs/demo_causal.yaml --seed {seed} --output_dir {out}/demo_causal",
                QUICK_TRAIN,
            ),
            Step(
                "python run_clm_diff.py configs/demo_adapted.yaml --seed {seed} --model_name_or_path {out}/demo_causal "
                "--output_dir {out}/demo_diffusion",
                QUICK_TRAIN + " --eval_mc_samples 1",
            ),
            Step(
                "diff-generate --model {out}/demo_diffusion --prompt_file {out}/prompts.txt --append_dff "
                f"{SAMPLER} --output {{out}}/samples.jsonl"
            ),
        ],
        outcomes=[
            Outcome("causal perplexity", json_value("demo_causal/eval_results.json", "perplexity")),
            Outcome("eval_elbo_perplexity", json_value("demo_diffusion/eval_results.json", "eval_elbo_perplexity")),
            Outcome("word share", stdlib_word_share("samples.jsonl"), percent=True),
        ],
    ),
    "quickstart_bytes": Recipe(
        what="the quick start in bytes: configs/demo_clm.yaml, then configs/demo_adapted.yaml from it with the byte "
        "model's rows of 256, then the quick start's diff-generate",
        prepare=write_validation_prompts,
        steps=[
            Step("python run_clm_diff.py configs/demo_clm.yaml --seed {seed} --output_dir {out}/demo_clm", QUICK_TRAIN),
            Step(
                "python run_clm_diff.py configs/demo_adapted.yaml --seed {seed} --model_name_or_path {out}/demo_clm "
                "--block_size 256 --output_dir {out}/demo_diffusion",
                QUICK_TRAIN + " --eval_mc_samples 1",
            ),
            Step(
                "diff-generate --model {out}/demo_diffusion --prompt_file {out}/prompts.txt --append_dff "
                f"{SAMPLER} --output {{out}}/samples.jsonl"
            ),
        ],
        outcomes=[
            Outcome("causal perplexity", json_value("demo_clm/eval_results.json", "perplexity")),
            Outcome("eval_elbo_perplexity", json_value("demo_diffusion/eval_results.json", "eval_elbo_perplexity")),
            Outcome("word share", stdlib_word_share("samples.jsonl"), percent=True),
        ],
    ),
    "quickstart_scratch": Recipe(
        what="the from-scratch masked-diffusion demo, configs/demo.yaml, then the quick start's diff-generate",
        prepare=write_validation_prompts,
        steps=[
            Step(
                "python run_clm_diff.py configs/demo.yaml --seed {seed} --output_dir {out}/demo_scratch",
                QUICK_TRAIN + " --eval_mc_samples 1",
            ),
            Step(
                "diff-generate --model {out}/demo_scratch --prompt_file {out}/prompts.txt --append_dff "
                f"{SAMPLER} --output {{out}}/samples.jsonl"
            ),
        ],
        outcomes=[
            Outcome("eval_elbo_perplexity", json_value("demo_scratch/eval_results.json", "eval_elbo_perplexity")),
            Outcome("word share", stdlib_word_share("samples.jsonl"), percent=True),
        ],
    ),
    "chat_demo": Recipe(
        what="docs/chat.md: configs/chat_demo.yaml from the quick start's outputs/demo_diffusion (train it first), "
        f"then benchmarks/chat_replies.py ({CHAT_SAMPLER}) on every assistant turn of the first {CHAT_CONVERSATIONS} "
        "validation conversations of data/stdlib_chat",
        steps=[
            Step(
                "python run_clm_diff.py configs/chat_demo.yaml --seed {seed} --output_dir {out}/chat_demo",
                QUICK_TRAIN + " --eval_mc_samples 1",
            ),
            Step(
                f"python benchmarks/chat_replies.py --model {{out}}/chat_demo {CHAT_SAMPLER} "
                f"--max_conversations {CHAT_CONVERSATIONS} --output {{out}}/replies.jsonl",
                "--max_conversations 2",
            ),
        ],
        outcomes=[
            Outcome("eval_elbo_perplexity", json_value("chat_demo/eval_results.json", "eval_elbo_perplexity")),
            Outcome("exact match", json_value("replies.json", "exact_match"), percent=True),
            Outcome("token F1", json_value("replies.json", "token_f1"), percent=True),
        ],
    ),
    "arithmetic_sft": Recipe(
        what="docs/arithmetic.md: make_arithmetic.py, configs/demo_arithmetic.yaml, diff-eval-arithmetic on 500",
        steps=[
            ARITHMETIC_DATA,
            Step(
                "python run_clm_diff.py configs/demo_arithmetic.yaml --seed {seed} --train_file {out}/data/train.jsonl "
                "--output_dir {out}/arithmetic_sft",
                "--max_steps 4 --save_steps 2",
            ),
            arithmetic_eval("arithmetic_sft", "arithmetic_sft_test.jsonl"),
        ],
        outcomes=[Outcome("exact match", exact_match("arithmetic_sft_test.jsonl"), percent=True)],
    ),
    "arithmetic_dpo": Recipe(
        what="docs/arithmetic.md: configs/demo_dpo.yaml on the same seed's arithmetic_sft model, diff-eval-arithmetic",
        needs=["arithmetic_sft"],
        steps=[
            Step(
                "python run_diffusion_dpo.py configs/demo_dpo.yaml --seed {seed} --model_name_or_path "
                "{out}/arithmetic_sft --train_file {out}/data/train_pairs.jsonl --validation_file "
                "{out}/data/test_pairs.jsonl --output_dir {out}/arithmetic_dpo",
                "--max_steps 2 --eval_steps 2 --max_eval_samples 8",
            ),
            arithmetic_eval("arithmetic_dpo", "arithmetic_dpo_test.jsonl"),
        ],
        outcomes=[
            Outcome("exact match", exact_match("arithmetic_dpo_test.jsonl"), percent=True),
            Outcome("reward accuracy", json_value("arithmetic_dpo/eval_results.json", "eval_rewards/accuracies")),
        ],
    ),
    "arithmetic_strong": Recipe(
        what="docs/arithmetic.md: configs/arithmetic_strong.yaml and its causal twin, diff-eval-arithmetic on 500",
        steps=[
            ARITHMETIC_DATA,
            Step(
                "python run_clm_diff.py configs/arithmetic_strong.yaml --seed {seed} --train_file "
                "{out}/data/train.jsonl --output_dir {out}/arithmetic_strong",
                "--max_steps 4 --save_steps 2",
            ),
            Step(
                "python run_clm_diff.py configs/arithmetic_strong.yaml --seed {seed} --train_file "
                "{out}/data/train.jsonl --train_diff_model false --output_dir {out}/arithmetic_strong_causal",
                "--max_steps 4 --save_steps 2",
            ),
            arithmetic_eval("arithmetic_strong", "arithmetic_strong_test.jsonl"),
            arithmetic_eval("arithmetic_strong_causal", "arithmetic_strong_causal_test.jsonl"),
        ],
        outcomes=[
            Outcome("exact match", exact_match("arithmetic_strong_test.jsonl"), percent=True),
            Outcome("causal exact match", exact_match("arithmetic_strong_causal_test.jsonl"), percent=True),
        ],
    ),
    "arithmetic_grpo": Recipe(
        what="docs/grpo.md: configs/demo_arithmetic.yaml stopped at 850 steps (rows of 12, constant learning rate), "
        "then configs/arithmetic_grpo.yaml from it, diff-eval-arithmetic on 500 before and after",
        steps=[
            ARITHMETIC_DATA,
            Step(
                "python run_clm_diff.py configs/demo_arithmetic.yaml --seed {seed} --max_steps 850 --block_size 12 "
                "--lr_scheduler_type constant_with_warmup --train_file {out}/data/train.jsonl "
                "--output_dir {out}/grpo_sft",
                "--max_steps 4 --save_steps 2",
            ),
            arithmetic_eval("grpo_sft", "grpo_sft_test.jsonl"),
            Step(
                "python run_diffusion_grpo.py configs/arithmetic_grpo.yaml --seed {seed} --model_name_or_path "
                "{out}/grpo_sft --train_file {out}/data/train.jsonl --save_strategy no --output_dir {out}/grpo_recipe",
                "--max_steps 2",
            ),
            arithmetic_eval("grpo_recipe", "grpo_recipe_test.jsonl"),
        ],
        outcomes=[
            Outcome("SFT exact match", exact_match("grpo_sft_test.jsonl"), percent=True),
            Outcome("GRPO exact match", exact_match("grpo_recipe_test.jsonl"), percent=True),
        ],
    ),
    "docstring_choice": Recipe(
        what="docs/harness.md: configs/docstring_choice_causal.yaml, configs/docstring_choice_adapted.yaml from it, "
        "diff-lm-eval docstring_choice (mc_num 128)",
        steps=[
            Step(
                "python run_clm_diff.py configs/docstring_choice_causal.yaml --seed {seed} "
                "--output_dir {out}/docstring_choice_causal",
                QUICK_TRAIN,
            ),
            Step(  # the causal model as the harness's own `hf` model: stage 1's score
                "diff-lm-eval --model {out}/docstring_choice_causal --tasks docstring_choice --include_path tasks/ "
                "--output_path {out}/lm_eval_causal.json",
                "--limit 4",
            ),
            Step(
                "python run_clm_diff.py configs/docstring_choice_adapted.yaml --seed {seed} --model_name_or_path "
                "{out}/docstring_choice_causal --output_dir {out}/docstring_choice_adapted",
                QUICK_TRAIN + " --eval_mc_samples 1",
            ),
            Step(
                "diff-lm-eval --model {out}/docstring_choice_adapted --tasks docstring_choice --include_path tasks/ "
                "--model_args mc_num=128,batch_size=128 --output_path {out}/lm_eval.json",
                "--limit 4 --model_args mc_num=2",
            ),
        ],
        outcomes=[
            Outcome(
                "causal acc_mutual_info", lm_eval_metric("lm_eval_causal.json", "docstring_choice", "acc_mutual_info")
            ),
            Outcome("causal acc", lm_eval_metric("lm_eval_causal.json", "docstring_choice", "acc")),
            Outcome("acc_mutual_info", lm_eval_metric("lm_eval.json", "docstring_choice", "acc_mutual_info")),
            Outcome("acc", lm_eval_metric("lm_eval.json", "docstring_choice", "acc")),
        ],
    ),
    "browser_demo": Recipe(
        what="docs/browser.md: configs/browser_demo_causal.yaml, then configs/browser_demo.yaml from it, then "
        f"diff-generate ({BROWSER_SAMPLER}); word share in the fortunes' training text",
        steps=[
            Step(
                "python run_clm_diff.py configs/browser_demo_causal.yaml --seed {seed} "
                "--output_dir {out}/browser_demo_causal",
                BROWSER_QUICK,
            ),
            Step(
                "python run_clm_diff.py configs/browser_demo.yaml --seed {seed} --model_name_or_path "
                "{out}/browser_demo_causal --output_dir {out}/browser_demo",
                BROWSER_QUICK + " --eval_mc_samples 1",
            ),
            Step(f"diff-generate --model {{out}}/browser_demo {BROWSER_SAMPLER} --output {{out}}/samples.jsonl"),
        ],
        outcomes=[
            Outcome("causal perplexity", json_value("browser_demo_causal/eval_results.json", "perplexity")),
            Outcome("ELBO bound (nats/token)", json_value("browser_demo/eval_results.json", "eval_elbo_nll")),
            Outcome("word share", fortunes_word_share("samples.jsonl"), percent=True),
        ],
    ),
}


def summary(values: list[float]) -> tuple[float, float, float]:
    """(mean, min, max) of the finite values; NaNs when there are none."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return math.nan, math.nan, math.nan
    return sum(finite) / len(finite), min(finite), max(finite)


def formatted(value: float, percent: bool = False, decimals: int = 3) -> str:
    if math.isnan(value):
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.{decimals}f}"


def summary_cell(values: list[float], percent: bool = False, decimals: int = 3) -> str:
    """ "mean [min, max]" of `values`, as the docs quote it."""
    return "{} [{}, {}]".format(*(formatted(value, percent, decimals) for value in summary(values)))


def seed_directory(root: str, name: str, seed: int) -> str:
    return os.path.join(root, name, f"seed{seed}")


def commands(recipe: Recipe, seed: int, out: str, quick: bool) -> list[str]:
    """The recipe's commands for one seed, as shell text."""
    filled = []
    for step in recipe.steps:
        command = step.command.format(seed=seed, out=shlex.quote(out))
        filled.append(f"{command} {step.quick}" if quick and step.quick else command)
    return filled


def run_seed(name: str, recipe: Recipe, seed: int, out: str, quick: bool) -> dict:
    """Run one seed's commands from the repository root (`out` relative to it; each command logged to
    out/NAME-N.log) and read its outcomes; also the wall and CPU seconds of it all."""
    directory = os.path.join(REPO_ROOT, out)
    os.makedirs(directory, exist_ok=True)
    environment = {  # `python` and the console scripts of this environment, running this checkout's code
        **os.environ,
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]),
    }
    wall, cpu = [], []
    with stopwatch(wall, cpu):
        if recipe.prepare is not None:
            recipe.prepare(directory)
        for number, command in enumerate(commands(recipe, seed, out, quick), 1):
            log_path = os.path.join(directory, f"{name}-{number}.log")
            with open(log_path, "w", encoding="utf-8") as log:
                log.write(f"$ {command}\n")
                log.flush()
                finished = subprocess.run(
                    command, shell=True, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment
                )
            if finished.returncode != 0:
                with open(log_path, encoding="utf-8") as log:
                    sys.stderr.write(log.read()[-3000:])
                raise SystemExit(f"seed {seed}: `{command}` failed with exit code {finished.returncode} ({log_path})")
    with open(os.path.join(directory, f"{name}-times.json"), "w", encoding="utf-8") as handle:
        json.dump({"commands": commands(recipe, seed, out, quick), "wall": wall[0], "cpu": cpu[0]}, handle)
    outcomes = [outcome.read(directory) for outcome in recipe.outcomes]
    return {"seed": seed, "outcomes": outcomes, "wall": wall[0], "cpu": cpu[0]}


def reused_seed(name: str, recipe: Recipe, seed: int, out: str, quick: bool) -> dict | None:
    """A seed whose directory already holds every outcome: those outcomes, with the times its run recorded when it
    ran these same commands (NaN, printed "–", otherwise); None when an outcome is missing."""
    directory = os.path.join(REPO_ROOT, out)
    try:
        outcomes = [outcome.read(directory) for outcome in recipe.outcomes]
    except FileNotFoundError:
        return None
    times = {"wall": math.nan, "cpu": math.nan}
    times_path = os.path.join(directory, f"{name}-times.json")
    if os.path.exists(times_path):
        with open(times_path, encoding="utf-8") as handle:
            saved = json.load(handle)
        if saved["commands"] == commands(recipe, seed, out, quick):
            times = {"wall": saved["wall"], "cpu": saved["cpu"]}
    return {"seed": seed, "outcomes": outcomes, **times}


def table(recipe: Recipe, results: list[dict]) -> str:
    """Per seed its outcomes and seconds, then "mean [min, max] over N seeds" of each column."""
    headers = ["seed", *(outcome.name for outcome in recipe.outcomes), "wall s", "CPU s"]
    rows = [
        [
            result["seed"],
            *(formatted(value, outcome.percent) for value, outcome in zip(result["outcomes"], recipe.outcomes)),
            formatted(result["wall"], decimals=0),
            formatted(result["cpu"], decimals=0),
        ]
        for result in results
    ]
    columns = [[result["outcomes"][i] for result in results] for i in range(len(recipe.outcomes))]
    rows.append(
        [
            f"mean [min, max] over {len(results)} seed{'s' if len(results) != 1 else ''}",
            *(summary_cell(column, outcome.percent) for column, outcome in zip(columns, recipe.outcomes)),
            summary_cell([result["wall"] for result in results], decimals=0),
            summary_cell([result["cpu"] for result in results], decimals=0),
        ]
    )
    return markdown_table(headers, rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="each command's short-run flags: checks, not results")
    parser.add_argument("--output_root", help="where the seeds' directories go (default outputs/recipes[_quick])")
    parser.add_argument(
        "--reuse", action="store_true", help="a seed whose directory holds every outcome is read back, not run again"
    )
    args = parser.parse_args(argv)
    recipe = RECIPES[args.recipe]
    root = args.output_root or os.path.join("outputs", "recipes_quick" if args.quick else "recipes")
    root = os.path.relpath(os.path.abspath(root), REPO_ROOT)  # the commands run from the repository root
    for needed in recipe.needs:
        missing = [s for s in args.seeds if not os.path.isdir(seed_directory(root, needed, s))]
        if missing:
            raise SystemExit(
                f"{args.recipe} reads the {needed} outputs of seeds {missing}: run "
                f"`python benchmarks/recipes.py {needed} --seeds {' '.join(map(str, missing))}"
                f"{' --quick' if args.quick else ''}` first."
            )
    with results_file(f"recipes_{args.recipe}", args.quick):
        print(f"{args.recipe}: {recipe.what}.")
        results = []
        for seed in args.seeds:
            # a recipe that continues another works in that recipe's directory for the seed
            out = seed_directory(root, recipe.needs[0] if recipe.needs else args.recipe, seed)
            for command in commands(recipe, seed, out, args.quick):
                print(f"  seed {seed}: {command}")
            reused = reused_seed(args.recipe, recipe, seed, out, args.quick) if args.reuse else None
            if reused is not None:
                print(f"  seed {seed}: reused the outcomes in {out}")
            results.append(reused or run_seed(args.recipe, recipe, seed, out, args.quick))
        print()
        print(table(recipe, results))


if __name__ == "__main__":
    main()
