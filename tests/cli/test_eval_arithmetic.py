"""diff-eval-arithmetic and the exact_match metric: hand-counted scores, real tiny checkpoints, bad test files."""

import json
import math

import pytest
import torch

from conftest import count_forward_passes, make_byte_tokenizer
from data_scripts.make_arithmetic import make_arithmetic, problem_record
from diff_trainer.cli import eval_arithmetic as cli
from diff_trainer.sampling.masked import GenerationResult, SamplerConfig


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    """Ten + and - problems as make_arithmetic writes them (text, prompt and answer fields)."""
    directory = tmp_path_factory.mktemp("arithmetic")
    make_arithmetic(directory, num_train=0, num_test=10, max_operand=20, operators="+-", seed=3)
    return directory / "test.jsonl"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def solve(prompt: str) -> str:
    """The right answer of 'a+b=' or 'a-b=' (a leading operand never has a sign here)."""
    expression = prompt.rstrip("=")
    operator = "+" if "+" in expression else "-"
    a, b = expression.split(operator)
    return str(int(a) + int(b) if operator == "+" else int(a) - int(b))


def fake_generate(tokenizer, answer_for, nfe_for=lambda batch: 3, suffix="</s>97"):
    """A stand-in for run_sampler: answer_for(prompt) + suffix after each prompt, padded to gen_length."""

    def run(model, prompt_ids, config, **kwargs):
        rows = []
        for ids in prompt_ids:
            prompt = tokenizer.decode(ids).removesuffix("<DFF>")
            new = tokenizer.encode(answer_for(prompt) + suffix, add_special_tokens=False)[: config.gen_length]
            rows.append(ids + new + [tokenizer.eos_token_id] * (config.gen_length - len(new)))
        width = max(len(row) for row in rows)
        sequences = torch.tensor([[tokenizer.pad_token_id] * (width - len(row)) + row for row in rows])
        return GenerationResult(sequences, torch.ones_like(sequences), width - config.gen_length, nfe_for(prompt_ids))

    return run


# ----------------------------------------------------------------------------------------------------
# The metric


def test_exact_match_ignores_surrounding_whitespace_only():
    metric = cli.load_exact_match()
    result = metric.compute(
        predictions=[" 19", "20\n", "1 9", "-4", "ab"], references=["19", "20", "19", "4", "AB"], return_matches=True
    )
    assert result["matches"] == [True, True, False, False, False]
    assert result["exact_match"] == pytest.approx(2 / 5)
    assert metric.compute(predictions=["7"], references=["7"]) == {"exact_match": 1.0}


def test_exact_match_of_nothing_is_nan():
    assert math.isnan(cli.load_exact_match().compute(predictions=[], references=[])["exact_match"])


# ----------------------------------------------------------------------------------------------------
# Reading test files


def test_problems_from_prompt_answer_or_text_records(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "1+2=", "answer": "3"}),
                "",
                json.dumps({"text": "5-9=<DFF>-4"}),
                json.dumps({"text": "a<DFF>b<DFF>c"}),
            ]
        )
        + "\n"
    )
    problems = cli.read_problems(str(path))
    assert [(p.prompt, p.answer) for p in problems] == [("1+2=", "3"), ("5-9=", "-4"), ("a", "b<DFF>c")]
    other_marker = tmp_path / "other_marker.jsonl"
    other_marker.write_text(json.dumps({"text": "5-9=<SEP>-4"}) + "\n")
    assert [(p.prompt, p.answer) for p in cli.read_problems(str(other_marker), dff_token="<SEP>")] == [("5-9=", "-4")]


@pytest.mark.parametrize(
    "bad_line,message",
    [
        (json.dumps({"prompt": "3+4="}), "line 2: needs string fields 'prompt' and 'answer'"),
        (
            json.dumps({"text": "3+4=7"}),
            "line 2: needs string fields 'prompt' and 'answer', or a 'text' containing <DFF>",
        ),
        (json.dumps({"prompt": "3+4=", "answer": 7}), "line 2: needs string fields"),
        ('{"prompt": "3+4=", ', "line 2: not valid JSON"),
        ("[1, 2]", "line 2: needs string fields"),
    ],
)
def test_a_malformed_line_is_named_in_the_error(tiny_checkpoints, tmp_path, capsys, bad_line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(problem_record(1, "+", 2)) + "\n" + bad_line + "\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model", str(tiny_checkpoints / "diffusion"), "--test_file", str(path)])
    assert exit_info.value.code == 2
    assert f"{path} {message}" in capsys.readouterr().err


def test_an_empty_test_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no problems"):
        cli.read_problems(str(path))


# ----------------------------------------------------------------------------------------------------
# Scoring with a stand-in sampler


def test_a_perfect_model_scores_one_even_with_text_after_eos(
    tiny_checkpoints, test_file, tokenizer, monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(cli, "run_sampler", fake_generate(tokenizer, solve))
    output = tmp_path / "predictions.jsonl"
    cli.main(
        [
            "--model",
            str(tiny_checkpoints / "diffusion"),
            "--test_file",
            str(test_file),
            "--gen_length",
            "8",
            "--batch_size",
            "4",
            "--output",
            str(output),
        ]
    )
    out = capsys.readouterr().out
    assert "exact match: 1.0000 (10/10)" in out and "NFE per sample: 3.00" in out
    records = read_jsonl(output)
    assert [r["answer"] for r in records] == [r["answer"] for r in read_jsonl(test_file)]
    assert all(r["correct"] and r["completion"] == r["answer"] and r["nfe"] == 3 for r in records)
    assert records[0]["settings"]["sampler"] == "diffusion" and records[0]["settings"]["gen_length"] == 8


def test_accuracy_counts_right_answers_and_nfe_follows_batches(tokenizer, monkeypatch, tmp_path):
    """Only the + problems are answered right (with a leading space); a batch of n prompts reports n passes."""
    records = [
        problem_record(a, op, b) for a, op, b in [(1, "+", 2), (7, "-", 9), (3, "+", 3), (5, "-", 1), (2, "+", 8)]
    ]
    path = tmp_path / "five.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    wrong_on_minus = fake_generate(
        tokenizer, lambda p: " " + (solve(p) if "+" in p else "0"), nfe_for=len, suffix="</s>"
    )
    monkeypatch.setattr(cli, "run_sampler", wrong_on_minus)
    args = cli.build_parser().parse_args(
        ["--model", "unused", "--test_file", str(path), "--gen_length", "6", "--batch_size", "2"]
    )
    problems = cli.read_problems(str(path))
    prompt_ids = cli.prepare_prompts(args, tokenizer, None, [p.prompt for p in problems])
    config = SamplerConfig(mask_token_id=tokenizer.mask_token_id, gen_length=6, steps=6)
    evaluation = cli.evaluate_problems(None, tokenizer, problems, prompt_ids, args, config)
    assert [r["correct"] for r in evaluation.records] == [True, False, True, False, True]
    assert evaluation.accuracy == pytest.approx(3 / 5)
    assert evaluation.nfe_per_sample == pytest.approx((2 * 2 + 2 * 2 + 1 * 1) / 5)
    # Counted up to and including the EOS: " 3</s>" 3, " 0</s>" 3, " 6</s>" 3, " 0</s>" 3, " 10</s>" 4.
    assert evaluation.completion_tokens == 16


def test_completion_length_stops_at_the_first_eos():
    assert cli.completion_length([5, 6, 1, 7, 1], eos_token_id=1) == 3
    assert cli.completion_length([5, 6, 7], eos_token_id=1) == 3
    assert cli.completion_length([1, 1], eos_token_id=1) == 1


# ----------------------------------------------------------------------------------------------------
# Real (random) checkpoints


def parse_summary(out: str) -> dict:
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    return {
        "accuracy": float(lines["exact match"].split()[0]),
        "nfe": float(lines["NFE per sample"]),
        "tokens_per_second": float(lines["tokens/s"].split()[0]),
    }


@pytest.mark.parametrize(
    "name,flags,max_nfe",
    [
        ("diffusion", ["--gen_length", "8", "--threshold", "0.9", "--block_length", "4"], 8),
        ("diffusion", ["--gen_length", "8", "--steps", "4"], 4),
        ("causal", ["--gen_length", "6"], 6),
    ],
)
def test_a_random_checkpoint_runs_end_to_end(
    tiny_checkpoints, test_file, capsys, tmp_path, monkeypatch, name, flags, max_nfe
):
    forward_calls = count_forward_passes(monkeypatch)
    output = tmp_path / "out.jsonl"
    cli.main(
        [
            "--model",
            str(tiny_checkpoints / name),
            "--test_file",
            str(test_file),
            "--max_samples",
            "6",
            "--batch_size",
            "4",
            "--seed",
            "0",
            "--output",
            str(output),
            *flags,
        ]
    )
    summary = parse_summary(capsys.readouterr().out)
    assert summary["tokens_per_second"] > 0
    records = read_jsonl(output)
    assert len(records) == 6 and all(1 <= r["nfe"] <= max_nfe for r in records)
    # batches of 4 and 2 rows; each row records its batch's forward passes
    assert len({r["nfe"] for r in records[:4]}) == 1 and len({r["nfe"] for r in records[4:]}) == 1
    assert records[0]["nfe"] + records[4]["nfe"] == len(forward_calls)
    assert summary["nfe"] == pytest.approx(sum(r["nfe"] for r in records) / 6, abs=0.005)
    if "--steps" in flags:  # one block without a threshold: exactly one pass per step
        assert all(r["nfe"] == 4 for r in records)
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 6)
    assert records[0]["settings"]["sampler"] == ("causal" if name == "causal" else "diffusion")


def test_the_prompt_gets_the_dff_marker(tiny_checkpoints, test_file, tokenizer, monkeypatch):
    seen = []
    answer_right = fake_generate(tokenizer, solve)

    def recording_generate(model, prompt_ids, config, **kwargs):
        seen.extend(prompt_ids)
        return answer_right(model, prompt_ids, config)

    monkeypatch.setattr(cli, "run_sampler", recording_generate)
    cli.main(["--model", str(tiny_checkpoints / "diffusion"), "--test_file", str(test_file), "--max_samples", "2"])
    first = read_jsonl(test_file)[0]["prompt"]
    assert seen[0] == tokenizer.encode(first + "<DFF>", add_special_tokens=False)
    assert len(seen) == 2


def test_diffusion_flags_are_refused_for_a_causal_checkpoint(tiny_checkpoints, test_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model", str(tiny_checkpoints / "causal"), "--test_file", str(test_file), "--threshold", "0.9"])
    assert exit_info.value.code == 2
    assert "--threshold only apply to diffusion checkpoints" in capsys.readouterr().err
