"""diff-lm-eval end to end, offline: the shipped tasks on tiny diffusion and causal checkpoints, metrics recomputed."""

import importlib.util
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch

from conftest import make_byte_tokenizer, make_tiny_llama, make_tiny_sedd

pytest.importorskip("lm_eval", reason="needs the [eval] extra: pip install -e '.[eval]'")

from data_scripts.make_arithmetic import make_arithmetic  # noqa: E402
from diff_trainer.cli import lm_eval as cli  # noqa: E402
from diff_trainer.eval.harness import DiffusionLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASKS = "arithmetic_exact_match,docstring_choice,docstring_perplexity"
LIMIT = 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory laid out like the repository: tasks/, data/stdlib_docstrings, generated data/arithmetic, and
    a diffusion and a causal checkpoint of random tiny Llamas."""
    root = tmp_path_factory.mktemp("lm_eval")
    shutil.copytree(ROOT / "tasks", root / "tasks")
    shutil.copytree(ROOT / "data" / "stdlib_docstrings", root / "data" / "stdlib_docstrings")
    make_arithmetic(root / "data" / "arithmetic", num_train=0, num_test=10, max_operand=20, operators="+-", seed=1)
    tokenizer = make_byte_tokenizer()
    diffusion = make_tiny_llama(len(tokenizer))
    diffusion.config.diffusion_config = {
        "objective": "masked_diffusion",
        "mask_token_id": tokenizer.mask_token_id,
        "shift_logits": False,
        "noise_schedule": "linear",
        "time_eps": 1e-3,
        "dff_token": "<DFF>",
    }
    for name, model in (("diffusion", diffusion), ("causal", make_tiny_llama(len(tokenizer), bidirectional=False))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def all_docs(workdir, name):
    split = "test" if name == "arithmetic" else "validation"
    files = {"arithmetic": "data/arithmetic/test.jsonl", "docstrings": "data/stdlib_docstrings/validation.jsonl.zst"}[
        name
    ]
    return datasets.load_dataset("json", data_files={split: str(workdir / files)})[split]


def first_docs(workdir, name):
    return all_docs(workdir, name).select(range(LIMIT))


def first_choice_docs(workdir):
    """The docstring_choice documents the harness scores with --limit: built from the whole split, then cut."""
    spec = importlib.util.spec_from_file_location("docstring_utils", ROOT / "tasks" / "docstring_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.four_way_choices(all_docs(workdir, "docstrings")).select(range(LIMIT))


def request(*args):
    return SimpleNamespace(args=args)


def test_diffusion_checkpoint_scores_match_the_model_recomputed(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    results = cli.evaluate(
        [
            "--model",
            "diffusion",
            "--tasks",
            TASKS,
            "--include_path",
            "tasks",
            "--limit",
            str(LIMIT),
            "--model_args",
            "mc_num=2,batch_size=8,seed=7",
            "--output_path",
            "results.json",
        ]
    )["results"]
    lm = DiffusionLM("diffusion", mc_num=2, batch_size=8, seed=7)

    texts = first_docs(workdir, "docstrings")["text"]
    total = sum(lm.loglikelihood_rolling([request(text) for text in texts]))
    bits = -total / sum(len(t.encode("utf-8")) for t in texts) / math.log(2)
    assert results["docstring_perplexity"]["bits_per_byte,none"] == pytest.approx(bits, rel=1e-4)

    docs = first_choice_docs(workdir)

    # each choice is the continuation `<DFF>docstring` of the bare signature; mutual information subtracts the
    # choice's score after an empty context
    def scores(context, doc):
        return [score for score, _ in lm.loglikelihood([request(context, "<DFF>" + c) for c in doc["choices"]])]

    def accuracy(rows):
        return sum(max(range(4), key=row.__getitem__) == doc["label"] for row, doc in zip(rows, docs)) / LIMIT

    conditional = [scores(doc["signature"], doc) for doc in docs]
    gain = [[c - u for c, u in zip(row, scores("", doc))] for row, doc in zip(conditional, docs)]
    assert results["docstring_choice"]["acc,none"] == pytest.approx(accuracy(conditional))
    assert results["docstring_choice"]["acc_mutual_info,none"] == pytest.approx(accuracy(gain))

    problems = first_docs(workdir, "arithmetic")
    outputs = lm.generate_until(
        [request(p + "<DFF>", {"until": ["\n", "<DFF>"], "max_gen_toks": 8}) for p in problems["prompt"]]
    )
    exact = [(re.match(r"^\s*(-?\d+)", out) or [None])[0] == answer for out, answer in zip(outputs, problems["answer"])]
    assert results["arithmetic_exact_match"]["exact_match,strip"] == pytest.approx(sum(exact) / LIMIT)

    written = json.loads((workdir / "results.json").read_text())
    assert written["results"]["docstring_perplexity"]["bits_per_byte,none"] == pytest.approx(bits, rel=1e-4)
    assert written["model_args"] == "mc_num=2,batch_size=8,seed=7"


@torch.no_grad()
def test_causal_checkpoint_goes_through_the_harness_hf_model(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    results = cli.evaluate(
        ["--model", "causal", "--tasks", "docstring_perplexity", "--include_path", "tasks", "--limit", str(LIMIT)]
    )["results"]
    from diff_trainer.models.loading import load_checkpoint

    model, tokenizer = load_checkpoint("causal")
    total, size = 0.0, 0
    for text in first_docs(workdir, "docstrings")["text"]:  # log p(text | EOS), the harness's rolling prefix
        ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer.encode(text, add_special_tokens=False)])
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        total += float(log_probs.gather(-1, ids[0, 1:, None]).sum())
        size += len(text.encode("utf-8"))
    assert results["docstring_perplexity"]["bits_per_byte,none"] == pytest.approx(-total / size / math.log(2), rel=1e-4)


@torch.no_grad()
def test_sedd_checkpoint_is_scored_with_its_dwdse_bound(workdir, monkeypatch):
    """A saved score-entropy checkpoint (uniform graph, time-conditioned): bits per byte of its DWDSE bound."""
    tokenizer = make_byte_tokenizer()
    make_tiny_sedd(tokenizer, "uniform").save_pretrained(workdir / "sedd")
    tokenizer.save_pretrained(workdir / "sedd")
    monkeypatch.chdir(workdir)
    results = cli.evaluate(
        [
            "--model",
            "sedd",
            "--tasks",
            "docstring_perplexity",
            "--include_path",
            "tasks",
            "--limit",
            str(LIMIT),
            "--model_args",
            "mc_num=4,seed=3",
        ]
    )["results"]
    lm = DiffusionLM("sedd", mc_num=4, seed=3)
    texts = first_docs(workdir, "docstrings")["text"]
    total = sum(lm.loglikelihood_rolling([SimpleNamespace(args=(text,)) for text in texts]))
    size = sum(len(text.encode("utf-8")) for text in texts)
    assert results["docstring_perplexity"]["bits_per_byte,none"] == pytest.approx(-total / size / math.log(2), rel=1e-4)


def test_bad_flags_are_refused_before_loading(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    cases = [
        (["--model", "diffusion", "--tasks", "no_such_task", "--include_path", "tasks"], "unknown task.*no_such_task"),
        (
            [
                "--model",
                "causal",
                "--tasks",
                "docstring_perplexity",
                "--include_path",
                "tasks",
                "--model_args",
                "mc_num=4",
            ],
            "causal checkpoint.*mc_num",
        ),
        (
            [
                "--model",
                "diffusion",
                "--tasks",
                "docstring_perplexity",
                "--include_path",
                "tasks",
                "--model_args",
                "mc_num",
            ],
            "'mc_num' is not key=value",
        ),
        (
            ["--model", "diffusion", "--tasks", "docstring_perplexity", "--include_path", "missing"],
            "--include_path missing: no such directory",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert re.search(message, capsys.readouterr().err)


def test_missing_task_data_names_the_file(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(SystemExit):
        cli.main(
            [
                "--model",
                str(workdir / "diffusion"),
                "--tasks",
                "docstring_perplexity",
                "--include_path",
                str(workdir / "tasks"),
                "--limit",
                "1",
            ]
        )
    assert re.search(r"validation\.jsonl\.zst.*run from the repository root", capsys.readouterr().err)
