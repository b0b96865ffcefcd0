"""Rendering traces: terminal frames, GIF frames, and the diff-view command."""

import pytest
import torch
from PIL import Image

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.cli import view
from diff_trainer.sampling.masked import StepFrame, generate
from diff_trainer.sampling.render import ANSI_STYLES, MASK_GLYPH, TokenPieces, frame_cells, render_gif, render_text


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def byte_id(char):
    return ord(char) + 3  # ByT5: ids 0-2 are pad, eos, unk


def hand_frame(tokenizer):
    """Row 0: one pad, prompt 'hi', then [mask, 'j' (new this step), mask]; the trace's second step."""
    mask = tokenizer.mask_token_id
    sequences = torch.tensor([[0, byte_id("h"), byte_id("i"), mask, byte_id("j"), mask]])
    committed = torch.tensor([[False, False, False, False, True, False]])
    confidence = torch.where(committed, 0.7, float("nan")).double()
    return StepFrame(
        step=1,
        blocks=[0],
        sequences=sequences,
        committed=committed,
        confidence=confidence,
        attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1]]),
        generation_start=3,
    )


def test_cells_skip_padding_and_mark_each_kind(tokenizer):
    cells = frame_cells(hand_frame(tokenizer), 0, TokenPieces(tokenizer), tokenizer.mask_token_id)
    assert [(c.text, c.kind) for c in cells] == [
        ("h", "prompt"),
        ("i", "prompt"),
        (MASK_GLYPH, "masked"),
        ("j", "new"),
        (MASK_GLYPH, "masked"),
    ]


def test_terminal_frame_highlights_new_tokens_and_counts_steps(tokenizer):
    frame = hand_frame(tokenizer)
    coloured = render_text(frame, 0, TokenPieces(tokenizer), tokenizer.mask_token_id, total_steps=3)
    header, body = coloured.split("\n")
    assert header == "step 2/3  block 1  +1 tokens"
    assert f"{ANSI_STYLES['new']}j\x1b[0m" in body
    assert body.count(MASK_GLYPH) == 2 and body.count(ANSI_STYLES["masked"]) == 2
    plain = render_text(frame, 0, TokenPieces(tokenizer), tokenizer.mask_token_id, color=False)
    assert plain == f"step 2  block 1  +1 tokens\nhi{MASK_GLYPH}[j]{MASK_GLYPH}"


def test_token_pieces_escape_control_characters_and_show_lone_bytes(tokenizer):
    pieces = TokenPieces(tokenizer)
    assert pieces(byte_id("\n")) == "\\n"
    assert pieces(byte_id("\x1b")) == "\\x1b"
    assert pieces(0xC3 + 3) == "\u00c3"  # the first byte of 'é' alone decodes to nothing: its token name 'Ã' shows
    assert pieces(byte_id(" ")) == " "


def test_gif_has_one_frame_per_step(tokenizer, tmp_path):
    model = make_tiny_llama(len(tokenizer))
    result = generate(
        model,
        [[byte_id("a"), byte_id("b")]],
        mask_token_id=tokenizer.mask_token_id,
        gen_length=8,
        steps=4,
        block_length=4,
        trace=True,
    )
    path = tmp_path / "trace.gif"
    assert render_gif(result.trace, path, tokenizer, tokenizer.mask_token_id, duration_ms=50) == 4
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        sizes, pixels = set(), []
        for index in range(gif.n_frames):
            gif.seek(index)
            sizes.add(gif.size)
            pixels.append(list(gif.convert("RGB").getdata()))
    assert len(sizes) == 1
    assert all(a != b for a, b in zip(pixels, pixels[1:]))  # every step changes the picture
    with pytest.raises(ValueError, match="empty"):
        render_gif([], tmp_path / "none.gif", tokenizer, tokenizer.mask_token_id)


def test_view_replays_every_step_and_writes_the_gif(tiny_checkpoints, tmp_path, capsys):
    gif = tmp_path / "view.gif"
    view.main(
        [
            "--model",
            str(tiny_checkpoints / "diffusion"),
            "--prompt",
            "ab",
            "--gen_length",
            "8",
            "--steps",
            "4",
            "--block_length",
            "4",
            "--delay",
            "0",
            "--gif",
            str(gif),
            "--no_color",
        ]
    )
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("step ")] == [
        f"step {n}/4  block {1 + (n - 1) // 2}  +2 tokens" for n in range(1, 5)
    ]
    assert "wrote 4 frames" in out
    with Image.open(gif) as image:
        assert image.n_frames == 4


def test_view_refuses_a_causal_checkpoint(tiny_checkpoints, capsys):
    with pytest.raises(SystemExit):
        view.main(["--model", str(tiny_checkpoints / "causal"), "--prompt", "ab", "--delay", "0"])
    assert "causal checkpoint" in capsys.readouterr().err
