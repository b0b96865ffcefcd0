"""diff-generate on tiny saved checkpoints: outputs, settings from the checkpoint, causal baselines, bad input."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import count_forward_passes, make_byte_tokenizer, make_tiny_llama
from diff_trainer.cli import generate as cli
from diff_trainer.sampling.masked import generate
from diff_trainer.sampling.settings import sampler_for


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def diffusion_config(tokenizer, shift=False):
    return {
        "objective": "masked_diffusion",
        "mask_token_id": tokenizer.mask_token_id,
        "shift_logits": shift,
        "noise_schedule": "linear",
        "time_eps": 1e-3,
        "dff_token": "<DFF>",
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """Diffusion, shift-diffusion and causal checkpoints saved with the byte tokenizer."""
    root = tmp_path_factory.mktemp("checkpoints")
    models = {
        "diffusion": make_tiny_llama(len(tokenizer)),
        "shift": make_tiny_llama(len(tokenizer), seed=1),
        "causal": make_tiny_llama(len(tokenizer), bidirectional=False),
    }
    models["diffusion"].config.diffusion_config = diffusion_config(tokenizer)
    models["shift"].config.diffusion_config = diffusion_config(tokenizer, shift=True)
    for name, model in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def run(checkpoints, name, *flags):
    cli.main(["--model", str(checkpoints / name), *flags])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_output_has_every_sample_the_settings_and_nfe(checkpoints, tokenizer, tmp_path):
    output = tmp_path / "out.jsonl"
    run(
        checkpoints,
        "diffusion",
        "--prompt",
        "12+7=",
        "--prompt",
        "3*4=",
        "--samples",
        "2",
        "--gen_length",
        "8",
        "--steps",
        "4",
        "--block_length",
        "4",
        "--temperature",
        "1",
        "--seed",
        "0",
        "--batch_size",
        "3",
        "--output",
        str(output),
    )
    records = read_jsonl(output)
    assert [(r["prompt"], r["sample"]) for r in records] == [("12+7=", 0), ("12+7=", 1), ("3*4=", 0), ("3*4=", 1)]
    settings = records[0]["settings"]
    assert settings["mask_token_id"] == tokenizer.mask_token_id and settings["shift"] is False
    assert (settings["sampler"], settings["steps"], settings["block_length"]) == ("diffusion", 4, 4)
    assert settings["eos_handling"] == "stop" and settings["eos_token_id"] == tokenizer.eos_token_id
    lengths = [len(tokenizer.encode(r["completion"], add_special_tokens=False)) for r in records]
    assert all(length <= 8 for length in lengths)
    # batches of 3 and 1; 2 steps per block of 4; a row that ended in block 1 leaves its batch after 2 steps
    assert [r["nfe"] for r in records] == [2 if length < 4 else 4 for length in lengths]
    for batch in (records[:3], records[3:]):
        assert {r["batch_forwards"] for r in batch} == {max(r["nfe"] for r in batch)}


def test_cache_flag_reaches_the_sampler(checkpoints, tokenizer, tmp_path):
    output = tmp_path / "cached.jsonl"
    run(
        checkpoints,
        "diffusion",
        "--prompt",
        "12+7=",
        "--gen_length",
        "8",
        "--block_length",
        "4",
        "--cache",
        "prefix",
        "--eos_handling",
        "none",
        "--output",
        str(output),
    )
    record = read_jsonl(output)[0]
    assert record["settings"]["cache"] == "prefix"
    model = AutoModelForCausalLM.from_pretrained(checkpoints / "diffusion").eval()
    expected = generate(
        model,
        cli.encode_prompts(tokenizer, ["12+7="]),
        sampler_for(
            diffusion_config(tokenizer),
            tokenizer,
            **cli.sampler_flags(
                cli.build_parser().parse_args(
                    [
                        "--model",
                        "m",
                        "--gen_length",
                        "8",
                        "--block_length",
                        "4",
                        "--cache",
                        "prefix",
                        "--eos_handling",
                        "none",
                    ]
                )
            ),
        ),
    )
    assert record["completion"] == cli.completion_text(tokenizer, expected.generated[0].tolist())
    assert record["nfe"] == record["batch_forwards"] == 8


def test_a_seed_repeats_the_output_and_txt_has_one_line_per_completion(checkpoints, tmp_path):
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for path in paths:
        run(
            checkpoints,
            "diffusion",
            "--prompt",
            "ab",
            "--samples",
            "3",
            "--gen_length",
            "8",
            "--temperature",
            "1",
            "--remasking",
            "random",
            "--seed",
            "5",
            "--output",
            str(path),
        )
    first, second = (path.read_text() for path in paths)
    assert first == second
    assert len(first.splitlines()) == 3


def test_prompt_files_as_lines_or_jsonl(checkpoints, tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("first\n\nsecond\n")
    records = tmp_path / "prompts.jsonl"
    records.write_text(json.dumps({"prompt": "first", "answer": "x"}) + "\n" + json.dumps({"prompt": "second"}) + "\n")
    assert cli.read_prompts(str(lines)) == cli.read_prompts(str(records)) == ["first", "second"]
    output = tmp_path / "out.jsonl"
    run(checkpoints, "diffusion", "--prompt_file", str(records), "--gen_length", "4", "--output", str(output))
    assert [r["prompt"] for r in read_jsonl(output)] == ["first", "second"]


def test_verbose_prints_every_intermediate_state(checkpoints, capsys):
    run(
        checkpoints,
        "diffusion",
        "--prompt",
        "ab",
        "--prompt",
        "c",
        "--gen_length",
        "8",
        "--steps",
        "4",
        "--eos_handling",
        "none",
        "--verbose",
        "--append_dff",
    )
    out = capsys.readouterr().out
    states = [line for line in out.splitlines() if line.startswith("[sequence ")]
    assert len(states) == 8  # 4 steps x 2 sequences
    assert states[0].startswith("[sequence 0] step 1  block 1  +2 tokens")
    assert "ab<DFF>" in out and "c<DFF>" in out


def test_append_dff_adds_the_checkpoint_marker_once(tokenizer):
    args = cli.build_parser().parse_args(["--model", "m", "--prompt", "x", "--append_dff"])
    ids = cli.prepare_prompts(args, tokenizer, {"dff_token": "<DFF>"}, ["ab", "ab<DFF>"])
    dff = tokenizer.convert_tokens_to_ids("<DFF>")
    assert ids[0] == ids[1] == tokenizer.encode("ab", add_special_tokens=False) + [dff]


def test_a_shift_checkpoint_samples(checkpoints, tmp_path):
    output = tmp_path / "shift.jsonl"
    run(checkpoints, "shift", "--prompt", "ab", "--gen_length", "8", "--steps", "8", "--output", str(output))
    record = read_jsonl(output)[0]
    assert record["settings"]["shift"] is True and record["nfe"] == 8  # one block: one pass per step


def test_suffix_infills_with_the_masked_sampler(checkpoints, tokenizer, tmp_path, capsys):
    """--suffix on a masked-diffusion checkpoint: every printed state ends with it; the completion is the library's
    infill for the same settings and seed."""
    output = tmp_path / "infill.jsonl"
    run(
        checkpoints,
        "diffusion",
        "--prompt",
        "ab",
        "--suffix",
        "yz",
        "--gen_length",
        "4",
        "--steps",
        "2",
        "--seed",
        "3",
        "--verbose",
        "--output",
        str(output),
    )
    lines = capsys.readouterr().out.splitlines()
    states = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("[sequence 0] step")]
    assert len(states) == 2 and all(state.startswith("ab") and state.endswith("yz") for state in states)
    record = read_jsonl(output)[0]
    model, _, _ = cli.open_checkpoint(str(checkpoints / "diffusion"))
    result = generate(
        model,
        [tokenizer.encode("ab", add_special_tokens=False)],
        mask_token_id=tokenizer.mask_token_id,
        gen_length=4,
        steps=2,
        eos_token_id=tokenizer.eos_token_id,
        eos_handling="stop",
        suffix_ids=tokenizer.encode("yz", add_special_tokens=False),
        seed=3,
        forbidden_token_ids=record["settings"]["forbidden_token_ids"],
    )
    assert record["settings"]["suffix"] == "yz"
    assert record["completion"] == cli.completion_text(tokenizer, result.generated[0].tolist())


def greedy_by_hand(model, tokenizer, prompt: str, length: int) -> list[int]:
    """Greedy decoding without a cache: append the argmax of the last position, stop after EOS."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    new = []
    with torch.no_grad():
        while len(new) < length and tokenizer.eos_token_id not in new:
            new.append(int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax()))
    return new


def test_a_causal_checkpoint_generates_with_model_generate(checkpoints, tokenizer, tmp_path, monkeypatch):
    forward_calls = count_forward_passes(monkeypatch)
    output = tmp_path / "causal.jsonl"
    prompts = ["ab", "longer prompt"]
    run(
        checkpoints,
        "causal",
        "--prompt",
        prompts[0],
        "--prompt",
        prompts[1],
        "--gen_length",
        "6",
        "--output",
        str(output),
    )
    records = read_jsonl(output)
    assert len(records) == 2 and records[0]["settings"]["sampler"] == "causal"
    model = AutoModelForCausalLM.from_pretrained(checkpoints / "causal").eval()
    expected = [greedy_by_hand(model, tokenizer, prompt, 6) for prompt in prompts]
    assert [r["completion"] for r in records] == [cli.completion_text(tokenizer, ids) for ids in expected]
    assert [r["nfe"] for r in records] == [len(forward_calls)] * 2  # one batch: every row shares the passes
    assert len(forward_calls) == max(len(ids) for ids in expected)


@pytest.mark.parametrize(
    "name,flags,message",
    [
        ("causal", ["--steps", "4"], "--steps only apply to diffusion checkpoints"),
        ("causal", ["--cache", "dual"], "--cache only apply to diffusion checkpoints"),
        ("causal", ["--threshold", "0.9", "--remasking", "margin"], "--remasking, --threshold only apply"),
        ("diffusion", ["--gen_length", "10", "--block_length", "4"], "multiple of block_length"),
        ("diffusion", ["--gen_length", "8", "--steps", "3", "--block_length", "4"], "multiple of the number of blocks"),
        ("diffusion", ["--prompt", "x" * 500, "--gen_length", "64"], "exceeds the model's context of 512"),
    ],
)
def test_bad_input_gets_a_clear_error(checkpoints, capsys, name, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run(checkpoints, name, "--prompt", "ab", *flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_each_prompt_is_printed_with_its_completion_and_the_output_file_confirmed(checkpoints, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    run(
        checkpoints,
        "diffusion",
        "--prompt",
        "ab",
        "--prompt",
        "c",
        "--samples",
        "2",
        "--gen_length",
        "4",
        "--temperature",
        "1",
        "--seed",
        "0",
        "--append_dff",
        "--output",
        str(output),
    )
    out = capsys.readouterr().out
    records = read_jsonl(output)
    headers = [
        "--- prompt 1/2, sample 1/2: ab<DFF>",
        "--- prompt 1/2, sample 2/2: ab<DFF>",
        "--- prompt 2/2, sample 1/2: c<DFF>",
        "--- prompt 2/2, sample 2/2: c<DFF>",
    ]
    expected = [line for header, record in zip(headers, records) for line in (header, record["completion"])]
    assert out == "\n".join(expected + [f"Wrote 4 completions to {output}"]) + "\n"


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory):
    """A diffusion checkpoint whose tokenizer carries the chatml template (as run_clm_diff.py --chat_template saves)."""
    from diff_trainer.data.chat import set_chat_template

    tokenizer = make_byte_tokenizer()
    set_chat_template(tokenizer, "chatml")
    model = make_tiny_llama(len(tokenizer))
    model.config.diffusion_config = diffusion_config(tokenizer)
    path = tmp_path_factory.mktemp("chat") / "checkpoint"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


def test_chat_renders_the_turn_and_stops_at_the_end_of_turn(chat_checkpoint, tmp_path, capsys):
    path, tokenizer = chat_checkpoint
    output = tmp_path / "chat.jsonl"
    cli.main(
        [
            "--model",
            str(path),
            "--chat",
            "--system",
            "Be brief.",
            "--prompt",
            "Hi?",
            "--gen_length",
            "8",
            "--output",
            str(output),
        ]
    )
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert f"--- prompt 1/1: {prompt}\n" in capsys.readouterr().out
    (record,) = read_jsonl(output)
    settings = record["settings"]
    assert settings["eos_token_id"] == [tokenizer.eos_token_id, end_of_turn]
    assert end_of_turn not in settings["forbidden_token_ids"]
    assert (settings["chat"], settings["system"]) == (True, "Be brief.")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    config = sampler_for(model, tokenizer, gen_length=8, extra_stop_ids=(end_of_turn,))
    expected = generate(model, [tokenizer.encode(prompt, add_special_tokens=False)], config).generated[0].tolist()
    assert record["completion"] == cli.completion_text(tokenizer, expected, (tokenizer.eos_token_id, end_of_turn))
    ids = tokenizer.encode("ab<|im_end|>cd", add_special_tokens=False)
    assert cli.completion_text(tokenizer, ids, (tokenizer.eos_token_id, end_of_turn)) == "ab"


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--system", "S"], "--system is a message of a chat: add --chat"),
        (["--chat", "--append_dff"], "drop --append_dff"),
    ],
)
def test_chat_flags_that_do_not_fit(chat_checkpoint, capsys, flags, message):
    with pytest.raises(SystemExit):
        cli.main(["--model", str(chat_checkpoint[0]), "--prompt", "Hi?", *flags])
    assert message in capsys.readouterr().err


def test_chat_without_a_template_is_a_usage_error(checkpoints, capsys):
    with pytest.raises(SystemExit):
        run(checkpoints, "diffusion", "--chat", "--prompt", "Hi?")
    assert "--chat: The tokenizer" in capsys.readouterr().err
