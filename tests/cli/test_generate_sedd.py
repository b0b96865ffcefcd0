"""diff-generate / diff-view with SEDD samplers: a sedd-small-layout directory, a saved DDiT, RADD on masked
diffusion."""

import json

import pytest
import torch
from transformers import ByT5Tokenizer

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.cli import generate as cli
from diff_trainer.cli import view
from diff_trainer.diffusion_config import sedd_diffusion_config
from diff_trainer.models.ddit import DDiTConfig, DDiTModel
from models.test_sedd_checkpoint import sedd_small_layout, write_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("sedd")
    hydra, state = sedd_small_layout(len(ByT5Tokenizer()), "absorb")
    write_checkpoint(root / "layout", hydra, state)
    tokenizer = make_byte_tokenizer(dff=False, mask=False)
    uniform = DDiTModel(
        DDiTConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            cond_dim=16,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
    )
    uniform.config.diffusion_config = sedd_diffusion_config(
        graph="uniform", noise="geometric", sigma_min=1e-4, sigma_max=20.0, mask_token_id=None
    )
    uniform.save_pretrained(root / "uniform")
    tokenizer.save_pretrained(root / "uniform")
    masked_tokenizer = make_byte_tokenizer()
    masked = make_tiny_llama(len(masked_tokenizer))
    masked.config.diffusion_config = {
        "objective": "masked_diffusion",
        "mask_token_id": masked_tokenizer.mask_token_id,
        "shift_logits": False,
        "noise_schedule": "linear",
        "time_eps": 1e-3,
        "dff_token": "<DFF>",
    }
    masked.save_pretrained(root / "masked")
    masked_tokenizer.save_pretrained(root / "masked")
    return root


def test_unconditional_samples_from_sedd_small_layout(checkpoints, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    flags = [
        "--model",
        str(checkpoints / "layout"),
        "--tokenizer_name",
        "byte",
        "--samples",
        "3",
        "--gen_length",
        "6",
        "--steps",
        "4",
        "--seed",
        "0",
        "--sedd_sampler",
        "analytic",
    ]
    cli.main(flags + ["--output", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and {r["sample"] for r in records} == {0, 1, 2}
    settings = records[0]["settings"]
    assert settings["sampler"] == "sedd" and settings["predictor"] == "analytic" and settings["graph"] == "absorb"
    assert records[0]["nfe"] == 5
    again = tmp_path / "again.jsonl"
    cli.main(flags + ["--output", str(again)])
    assert [json.loads(line)["completion"] for line in again.read_text().splitlines()] == [
        r["completion"] for r in records
    ]


def test_uniform_ddit_with_prompt_and_verbose(checkpoints, capsys):
    cli.main(
        [
            "--model",
            str(checkpoints / "uniform"),
            "--prompt",
            "ab",
            "--gen_length",
            "5",
            "--steps",
            "3",
            "--seed",
            "1",
            "--verbose",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("[sequence 0] step")]
    assert len(headers) == 4  # 3 steps + the final denoising step, each a header and the row's text
    assert all(lines[i + 1].startswith("ab") for i in headers)  # the prompt stays


def test_masked_diffusion_checkpoint_with_sedd_sampler(checkpoints, capsys):
    cli.main(
        [
            "--model",
            str(checkpoints / "masked"),
            "--prompt",
            "hi",
            "--gen_length",
            "4",
            "--steps",
            "4",
            "--sedd_sampler",
            "euler",
            "--seed",
            "0",
        ]
    )
    header, completion = capsys.readouterr().out.splitlines()  # the prompt, then its 4-byte completion
    assert header == "--- prompt 1/1: hi" and len(completion.encode()) <= 4


def test_view_gif_shows_uniform_flips(checkpoints, tmp_path, capsys):
    gif = tmp_path / "flips.gif"
    view.main(
        [
            "--model",
            str(checkpoints / "uniform"),
            "--prompt",
            "x",
            "--gen_length",
            "4",
            "--steps",
            "2",
            "--seed",
            "0",
            "--delay",
            "0",
            "--no_color",
            "--gif",
            str(gif),
        ]
    )
    assert "wrote 3 frames" in capsys.readouterr().out and gif.stat().st_size > 0


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--remasking", "random"], "belong to the masked-diffusion sampler"),
        (["--temperature", "0.5"], "belong to the masked-diffusion sampler"),
    ],
)
def test_refused_flags(checkpoints, flags, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--model", str(checkpoints / "uniform"), "--samples", "2", "--gen_length", "4", *flags])
    assert message in capsys.readouterr().err


def test_unconditional_needs_sedd_sampler(checkpoints, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--model", str(checkpoints / "masked"), "--gen_length", "4"])
    assert "unconditional --samples needs a SEDD sampler" in capsys.readouterr().err


def test_layout_without_tokenizer_is_refused(checkpoints):
    with pytest.raises(ValueError, match="pass --tokenizer_name gpt2"):
        cli.main(["--model", str(checkpoints / "layout"), "--samples", "1", "--gen_length", "4"])


def test_same_draws_as_library(checkpoints, tmp_path):
    """The command samples exactly what sedd_generate gives for the same seed."""
    from diff_trainer.sampling.sedd import SeddSamplerConfig, sedd_generate

    out = tmp_path / "cli.jsonl"
    cli.main(
        [
            "--model",
            str(checkpoints / "uniform"),
            "--samples",
            "2",
            "--gen_length",
            "5",
            "--steps",
            "3",
            "--seed",
            "4",
            "--output",
            str(out),
        ]
    )
    model, tokenizer, config = cli.open_checkpoint(str(checkpoints / "uniform"))
    sampler = SeddSamplerConfig.from_diffusion_config(
        config, len(tokenizer), gen_length=5, steps=3, pad_token_id=tokenizer.pad_token_id
    )
    result = sedd_generate(model, [[], []], sampler, generator=torch.Generator().manual_seed(4))
    expected = [cli.completion_text(tokenizer, row) for row in result.generated.tolist()]
    assert [json.loads(line)["completion"] for line in out.read_text().splitlines()] == expected


def test_suffix_is_kept_and_the_completion_is_the_infill(checkpoints, tmp_path, capsys):
    """--suffix: every step shows the prompt and the suffix unchanged; the output is the library's infill."""
    from diff_trainer.sampling.sedd import SeddSamplerConfig, sedd_generate

    out = tmp_path / "infill.jsonl"
    cli.main(
        [
            "--model",
            str(checkpoints / "uniform"),
            "--prompt",
            "ab",
            "--suffix",
            "yz",
            "--gen_length",
            "3",
            "--steps",
            "2",
            "--seed",
            "5",
            "--verbose",
            "--output",
            str(out),
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    states = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("[sequence 0] step")]
    assert len(states) == 3 and all(s.startswith("ab") and s.endswith("yz") for s in states)
    record = json.loads(out.read_text())
    assert record["settings"]["suffix"] == "yz"
    model, tokenizer, config = cli.open_checkpoint(str(checkpoints / "uniform"))
    sampler = SeddSamplerConfig.from_diffusion_config(
        config, len(tokenizer), gen_length=3, steps=2, pad_token_id=tokenizer.pad_token_id
    )
    result = sedd_generate(
        model,
        [tokenizer.encode("ab", add_special_tokens=False)],
        sampler,
        suffix_ids=tokenizer.encode("yz", add_special_tokens=False),
        generator=torch.Generator().manual_seed(5),
    )
    assert record["completion"] == cli.completion_text(tokenizer, result.generated[0].tolist())


def test_a_suffix_beyond_the_context_is_refused(checkpoints, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--model", str(checkpoints / "uniform"), "--gen_length", "4", "--prompt", "hi", "--suffix", "x" * 60])
    assert "+ --suffix (60 tokens) exceeds the model's context" in capsys.readouterr().err


def test_view_keeps_the_suffix_in_every_frame(checkpoints, capsys):
    view.main(
        [
            "--model",
            str(checkpoints / "uniform"),
            "--prompt",
            "x",
            "--suffix",
            "QQ",
            "--gen_length",
            "3",
            "--steps",
            "2",
            "--seed",
            "0",
            "--delay",
            "0",
            "--no_color",
        ]
    )
    frames = [line for line in capsys.readouterr().out.splitlines() if line.startswith("x")]
    assert len(frames) == 3 and all(frame.endswith("QQ") for frame in frames)
