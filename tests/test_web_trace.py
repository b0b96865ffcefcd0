"""web/js/trace.js (run with Node): how the page draws a trace frame, EOS padding drawn as padding."""

import shutil

import pytest

from test_web_sampler import CASES, EOS_BOOSTS, PROMPT, TOKENS, boosts_for, node

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (apt install nodejs)")

EOS, MASK = TOKENS["eos"], TOKENS["mask"]
PIECES = (
    {i: f"<{i}>" for i in range(TOKENS["vocab_size"])}
    | {i: chr(ord("a") + i - 2) for i in range(2, 28)}
    | {EOS: "<|endoftext|>", MASK: "<|mask|>"}
)


def drawn(frames):
    """Each frame's cells as (text, kind, fresh) triples."""
    answer = node({"trace": {"frames": frames, "tokens": TOKENS, "pieces": {str(k): v for k, v in PIECES.items()}}})
    return [[(cell["text"], cell["kind"], cell["fresh"]) for cell in cells] for cells in answer]


def test_a_frame_is_drawn_with_the_first_eos_as_the_end_and_padding_after_it():
    # prompt "ab", 8 generated positions, suffix "z": "c d <eos> ░ <eos> e <eos> <eos>", committed now: 4 and 8
    frame = {
        "ids": [2, 3, 4, 5, EOS, MASK, EOS, 6, EOS, EOS, 27],
        "committed": [4, 8],
        "generationStart": 2,
        "generationEnd": 10,
    }
    assert drawn([frame]) == [
        [
            ("a", "prompt", False),
            ("b", "prompt", False),
            ("c", "token", False),
            ("d", "token", False),
            ("<|endoftext|>", "end", True),
            ("░", "masked", False),  # still being denoised
            ("·", "pad", False),
            ("e", "pad", False),  # not part of the completion, but the model's choice: its text, dimmed
            ("·", "pad", True),
            ("·", "pad", False),
            ("z", "prompt", False),  # the fixed suffix
        ]
    ]


def test_sampled_frames_show_one_end_mark_and_padding_after_it():
    settings = CASES["EOS stop"]
    frames = node(
        {
            "sample": {
                "prompt": PROMPT,
                "settings": settings,
                "tokens": TOKENS,
                "boosts": boosts_for(len(PROMPT) + settings["gen_length"], EOS_BOOSTS),
            }
        }
    )
    last = frames[-1]
    assert last.get("filled") and last["ids"].count(EOS) >= 5  # the sampler padded the row with EOS
    generated = last["ids"][len(PROMPT) :]
    end = generated.index(EOS)
    padding = len(generated) - end - 1
    cells = drawn([last])[0][len(PROMPT) :]
    after = ["·" if i == EOS else PIECES[i] for i in generated[end + 1 :]]  # the stop rule fills whole blocks only
    assert [text for text, _, _ in cells] == [PIECES[i] for i in generated[: end + 1]] + after
    assert after.count("·") >= 4
    assert [kind for _, kind, _ in cells] == ["token"] * end + ["end"] + ["pad"] * padding
    assert all(text != PIECES[EOS] for frame in drawn(frames) for text, kind, _ in frame if kind != "end")
