"""diff-chat through a pseudo-terminal: two turns, the second rendered with the first in its history."""

import os
import pty
import select
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.cli.generate import completion_text
from diff_trainer.data.chat import render, set_chat_template
from diff_trainer.sampling.masked import generate
from diff_trainer.sampling.settings import sampler_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = make_byte_tokenizer()
    set_chat_template(tokenizer, "chatml")
    model = make_tiny_llama(len(tokenizer), initializer_range=1.0)  # large weights: replies depend on the context
    model.config.diffusion_config = {
        "objective": "masked_diffusion",
        "mask_token_id": tokenizer.mask_token_id,
        "shift_logits": False,
        "noise_schedule": "linear",
        "time_eps": 1e-3,
        "dff_token": "<DFF>",
    }
    path = tmp_path_factory.mktemp("chat") / "checkpoint"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


def read_until(fd, marker: bytes, seen: bytes = b"", timeout: float = 120) -> bytes:
    """Terminal output up to and including the next `marker`."""
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"no {marker!r} in the terminal after {timeout} s: {seen!r}"
        seen += os.read(fd, 4096)
    return seen


def chat_in_terminal(path, lines: list[str], *flags) -> str:
    """Run diff-chat on a pseudo-terminal, type `lines` one after each prompt, return everything it showed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "diff_trainer.cli.chat", "--model", str(path), *flags],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    os.close(follower)
    shown = b""
    try:
        for line in [*lines, "/exit"]:
            shown = read_until(leader, b"you> ", shown)
            os.write(leader, line.encode() + b"\n")
            shown = shown.replace(b"you> ", b"YOU> ", 1)  # the next prompt is a new one
        assert process.wait(timeout=120) == 0
        while select.select([leader], [], [], 0.5)[0]:
            try:
                shown += os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
    finally:
        process.kill()
        os.close(leader)
    return shown.decode().replace("\r\n", "\n")


def replies(
    model, tokenizer, turns: list[str], flags: dict, seed: int | None = None, system: str = "Be brief."
) -> list[str]:
    """The replies, computed in-process: each turn rendered with every earlier exchange before it; with `seed`, one
    generator seeded once for the whole conversation, as diff-chat's --seed."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = sampler_for(model, tokenizer, extra_stop_ids=(end_of_turn,), **flags)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    messages, answers = ([{"role": "system", "content": system}] if system else []), []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        ids = tokenizer.encode(render(tokenizer, tokenizer.chat_template, messages, True), add_special_tokens=False)
        generated = generate(model, [ids], config, generator=generator).generated[0].tolist()
        answer = completion_text(tokenizer, generated, config.eos_token_id)
        messages.append({"role": "assistant", "content": answer})
        answers.append(answer)
    return answers


def test_two_turns_the_second_sees_the_first(checkpoint):
    path, tokenizer = checkpoint
    shown = chat_in_terminal(
        path,
        ["Hi?", "And then?"],
        "--plain",
        "--system",
        "Be brief.",
        "--gen_length",
        "8",
        "--steps",
        "8",
        "--block_length",
        "8",
    )
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    first, second = replies(model, tokenizer, ["Hi?", "And then?"], {"gen_length": 8, "steps": 8, "block_length": 8})
    assert f"YOU> Hi?\nmodel> {first}\nYOU> And then?\nmodel> {second}\n" in shown
    (alone,) = replies(model, tokenizer, ["And then?"], {"gen_length": 8, "steps": 8, "block_length": 8})
    assert alone != second  # without the first exchange the second turn gets another reply


def test_the_denoising_is_drawn_on_a_terminal(checkpoint):
    path, _ = checkpoint
    shown = chat_in_terminal(
        path, ["Hi?"], "--gen_length", "4", "--steps", "4", "--block_length", "4", "--temperature", "0"
    )
    assert shown.count("\r\x1b[Kmodel> ") == 5  # one frame per step, then the reply
    assert "\u2591" in shown  # masks are shown while the reply fills in


def test_suffix_is_refused(checkpoint, capsys):
    from diff_trainer.cli import chat

    with pytest.raises(SystemExit):
        chat.main(["--model", str(checkpoint[0]), "--suffix", "x"])
    assert "do not apply to a chat" in capsys.readouterr().err


def test_a_seed_gives_the_replies_of_a_generator_seeded_once_for_the_conversation(checkpoint):
    path, tokenizer = checkpoint
    flags = ["--plain", "--gen_length", "8", "--steps", "8", "--block_length", "8", "--temperature", "1"]
    shown = chat_in_terminal(path, ["Hi?", "Hi?"], *flags, "--seed", "3")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    sampler = {"gen_length": 8, "steps": 8, "block_length": 8, "temperature": 1.0}
    first, second = replies(model, tokenizer, ["Hi?", "Hi?"], sampler, seed=3, system="")
    assert f"YOU> Hi?\nmodel> {first}\nYOU> Hi?\nmodel> {second}\n" in shown
    assert replies(model, tokenizer, ["Hi?"], sampler, seed=4, system="") != [first]  # the seed matters
