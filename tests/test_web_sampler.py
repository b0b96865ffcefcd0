"""web/js/sampler.js and web/js/rng.js (run with Node) against diff_trainer.sampling and hand computations.

Both samplers are given the same fake denoiser, whose float32 logits are exact functions of the input ids, so every
step's committed positions and tokens must agree exactly.
"""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from diff_trainer.sampling.masked import generate

HARNESS = Path(__file__).with_name("web_harness.mjs")
VOCAB = 40
TOKENS = {"vocab_size": VOCAB, "mask": 39, "eos": 1, "forbidden_ids": [0, 38, 39], "shift": False}
PROMPT = [5, 17, 23, 8]
UNLIKELY = -50.0  # added to the logits of the forbidden ids, so the Python sampler (which only forbids the mask) agrees

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (apt install nodejs)")


def node(request: dict):
    completed = subprocess.run(
        ["node", str(HARNESS)], input=json.dumps(request), capture_output=True, text=True, check=True, timeout=60
    )
    answer = json.loads(completed.stdout)
    if "error" in answer:
        raise ValueError(answer["error"])
    return answer["result"]


class FakeDenoiser(torch.nn.Module):
    """The harness's fake model in torch: logits from integer arithmetic on the ids, plus fixed boosts."""

    def __init__(self, boosts: dict[str, float]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the sampler a device
        self.boosts = {tuple(map(int, key.split(","))): value for key, value in boosts.items()}

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        rows = []
        for ids in input_ids.tolist():
            h = 0
            for j, token in enumerate(ids):
                h = (h + token * (j + 1)) % 9973
            i = torch.arange(len(ids)).unsqueeze(1)
            v = torch.arange(VOCAB).unsqueeze(0)
            a = (h * 31 + i * 1009 + v * 7919) % 65521
            logits = ((a * 40503) % 65536).float() / 8192
            for (position, token), value in self.boosts.items():
                if position < len(ids):
                    logits[position, token] += value
            rows.append(logits)
        return type("Output", (), {"logits": torch.stack(rows)})()


def boosts_for(length: int, extra: dict | None = None) -> dict[str, float]:
    boosts = {f"{i},{token}": UNLIKELY for i in range(length) for token in (0, 38)}
    boosts.update(extra or {})
    return boosts


def python_frames(settings: dict, boosts: dict, shift: bool = False, suffix=()):
    model = FakeDenoiser(boosts)
    eos_handling = settings.get("eos_handling", "stop")
    result = generate(
        model,
        [PROMPT],
        mask_token_id=TOKENS["mask"],
        eos_token_id=TOKENS["eos"],
        pad_token_id=0,
        eos_handling=eos_handling,
        shift=shift,
        trace=True,
        suffix_ids=suffix,
        **{k: v for k, v in settings.items() if k not in ("eos_handling", "seed")},
    )
    frames = [(sorted(torch.nonzero(f.committed[0]).flatten().tolist()), f.sequences[0].tolist()) for f in result.trace]
    return frames, result.sequences[0].tolist(), result.nfe


def js_frames(settings: dict, boosts: dict, shift: bool = False, suffix=()):
    tokens = {**TOKENS, "shift": shift}
    frames = node(
        {"sample": {"prompt": PROMPT, "settings": settings, "tokens": tokens, "boosts": boosts, "suffix": list(suffix)}}
    )
    stepped = [(f["committed"], f["ids"]) for f in frames if not f.get("filled")]
    return stepped, frames[-1]["ids"], frames[-1]["nfe"]


CASES = {
    "one block, one token per step": dict(gen_length=8, steps=8),
    "blocks, two tokens per step": dict(gen_length=12, steps=6, block_length=4),
    "uneven schedule": dict(gen_length=10, steps=4, block_length=5),
    "threshold": dict(gen_length=12, block_length=6, threshold=0.17, eos_handling="none"),
    "margin remasking": dict(gen_length=8, steps=4, remasking="margin"),
    "entropy with threshold": dict(gen_length=8, remasking="entropy", threshold=-2.5),
    "guidance": dict(gen_length=8, steps=8, guidance_scale=1.5),
    "EOS stop": dict(gen_length=12, steps=12, block_length=4, eos_handling="stop"),
    "EOS rank last": dict(gen_length=8, steps=8, eos_handling="rank_last"),
    "EOS forbidden": dict(gen_length=8, steps=8, eos_handling="forbid"),
    "EOS none": dict(gen_length=8, steps=8, eos_handling="none"),
}
# EOS wins at positions 6 and 8 (so it appears in the second block and blocks after it are filled with EOS).
EOS_BOOSTS = {f"{len(PROMPT) + 5},1": 9.0, f"{len(PROMPT) + 7},1": 9.0}


@pytest.mark.parametrize("name", list(CASES))
def test_js_sampler_commits_the_same_tokens_at_the_same_steps_as_python(name):
    settings = CASES[name]
    boosts = boosts_for(len(PROMPT) + settings["gen_length"], EOS_BOOSTS)
    expected = python_frames(settings, boosts)
    actual = js_frames(settings, boosts)
    assert actual == expected
    assert TOKENS["mask"] not in actual[1]


def test_eos_stop_fills_the_rest_with_eos_in_both():
    settings = CASES["EOS stop"]
    boosts = boosts_for(16, EOS_BOOSTS)
    _, final, nfe = js_frames(settings, boosts)
    first_eos = final.index(1)
    assert first_eos < len(PROMPT) + 8 and final[len(PROMPT) + 8 :] == [1] * 4  # third block never sampled
    assert nfe == 8


@pytest.mark.parametrize("name", ["one block, one token per step", "guidance", "EOS stop"])
def test_infilling_commits_the_same_tokens_as_python_and_keeps_the_suffix(name):
    settings, suffix = CASES[name], [12, 13, 14]
    boosts = boosts_for(len(PROMPT) + settings["gen_length"] + len(suffix), EOS_BOOSTS)
    actual = js_frames(settings, boosts, suffix=suffix)
    assert actual == python_frames(settings, boosts, suffix=suffix)
    assert actual[1][-3:] == suffix and actual[1] != js_frames(settings, boosts)[1] + suffix


def test_shift_models_read_the_logits_one_position_earlier():
    settings = dict(gen_length=8, steps=4)
    boosts = boosts_for(12)
    assert js_frames(settings, boosts, shift=True) == python_frames(settings, boosts, shift=True)
    assert js_frames(settings, boosts, shift=True)[1] != js_frames(settings, boosts)[1]


def test_special_tokens_other_than_eos_are_never_committed():
    # The pad id 0 and <DFF> id 38 have the largest logit everywhere; the mask (39) must not be chosen either.
    boosts = {f"{i},{token}": 20.0 for i in range(12) for token in (0, 38, 39)}
    _, final, _ = js_frames(dict(gen_length=8, steps=8, eos_handling="none"), boosts)
    assert not set(final[len(PROMPT) :]) & {0, 38, 39}


def test_ties_pick_the_lowest_id_and_the_leftmost_position():
    assert node({"call": {"name": "argmax", "args": [[1, 3, 3, 2]]}}) == 1
    assert node({"call": {"name": "selectMostConfident", "args": [[0.2, 0.5, 0.5, 0.5], [0, 2, 3, 1], 2]}}) == [1, 2]
    assert torch.tensor([1.0, 3.0, 3.0, 2.0]).argmax().item() == 1  # the same rule in torch


def test_transfer_schedule_and_softmax_match_hand_computation():
    assert node({"call": {"name": "numTransferTokens", "args": [10, 4]}}) == [3, 3, 2, 2]
    assert node({"call": {"name": "softmax", "args": [[0.0, math.log(3.0)]]}}) == pytest.approx([0.25, 0.75], abs=1e-15)
    guided = node({"call": {"name": "guidedLogits", "args": [[2.0, 1.0], [1.0, 1.0], 0.5]}})
    assert guided == [2.5, 1.0]  # un + (w + 1)(cond - un)


def test_gumbel_max_draw_is_argmax_of_scaled_logits_plus_gumbel_noise():
    logits, temperature, uniforms = [1.0, 2.0, 0.5], 0.7, [0.9, 0.1, 0.999]
    expected = max(range(3), key=lambda v: logits[v] / temperature - math.log(-math.log(uniforms[v])))
    assert expected == 2  # the noise overturns the argmax (1) here, so the test sees the noise
    assert node({"call": {"name": "sampleToken", "args": [logits, temperature, uniforms]}}) == expected
    assert node({"call": {"name": "sampleToken", "args": [logits, 0, []]}}) == 1


def mulberry32(seed: int):
    """An independent Python twin of web/js/rng.js: float64 uniforms from pairs of 32-bit words."""
    state = seed & 0xFFFFFFFF

    def word():
        nonlocal state
        state = (state + 0x6D2B79F5) & 0xFFFFFFFF
        t = state
        t = ((t ^ (t >> 15)) * (t | 1)) & 0xFFFFFFFF
        t = (t ^ ((t + (((t ^ (t >> 7)) * (t | 61)) & 0xFFFFFFFF)) & 0xFFFFFFFF)) & 0xFFFFFFFF
        return (t ^ (t >> 14)) & 0xFFFFFFFF

    while True:
        high, low = word() >> 5, word() >> 6
        yield (high * 67108864 + low) / 9007199254740992


def test_rng_matches_an_independent_implementation():
    twin = mulberry32(1234)
    assert node({"uniforms": {"seed": 1234, "count": 6}}) == [next(twin) for _ in range(6)]


def test_temperature_sampling_repeats_per_seed_and_changes_with_it():
    settings = dict(gen_length=8, steps=4, temperature=1.0, remasking="random")
    boosts = boosts_for(12)
    runs = [
        node({"sample": {"prompt": PROMPT, "settings": settings, "tokens": TOKENS, "boosts": boosts, "seed": seed}})[
            -1
        ]["ids"]
        for seed in (3, 3, 4)
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(gen_length=10, block_length=4), "must be a multiple of block_length"),
        (dict(gen_length=8, steps=3, block_length=4), "multiple of the number of blocks"),
        (dict(gen_length=4, steps=8), "steps per block exceed block_length"),
        (dict(gen_length=4, threshold=0.9, remasking="random"), "cannot be combined with remasking 'random'"),
        (dict(gen_length=4, remasking="best"), "remasking must be one of"),
        (dict(gen_length=4, temperature=-1), "temperature must be >= 0"),
    ],
)
def test_bad_settings_get_the_python_samplers_message(settings, message):
    with pytest.raises(ValueError, match=message):
        node({"call": {"name": "checkSettings", "args": [settings]}})
