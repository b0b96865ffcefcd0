import pytest
import torch

from conftest import make_tiny_llama
from diff_trainer.diffusion.attention import additive_mask
from diff_trainer.sampling.block import generate

VOCAB, MASK, EOS = 40, 39, 2
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19, 20, 21, 22, 23]]


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(VOCAB, seed=4, max_position_embeddings=64)


def count_calls(model) -> list:
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def sample(model, prompts=PROMPTS, **settings):
    settings = {"mask_token_id": MASK, "gen_length": 12, "steps": 12, "block_size": 4, **settings}
    return generate(model, prompts, **settings)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"shift": True},
        {"block_length": 2, "steps": 6},
        {"temperature": 1.0, "seed": 3, "shift": True},
        {"threshold": 0.031, "steps": 3, "block_length": 4},
        {"remasking": "margin", "block_size": 6, "block_length": 3, "gen_length": 9, "steps": 9},
        {"threshold": 0.04, "shift": True, "block_length": 2, "steps": 6},
        {"threshold": 0.03, "steps": 3, "eos_token_id": EOS, "eos_handling": "stop", "gen_length": 20},
        {"block_size": 8, "block_length": 4, "gen_length": 16, "steps": 8, "temperature": 0.5, "seed": 1},
    ],
)
def test_cache_equals_recomputing_the_prefix(model, settings):
    cached = sample(model, trace=True, **settings)
    recomputed = sample(model, use_cache=False, trace=True, **settings)
    assert torch.equal(cached.sequences, recomputed.sequences)
    assert len(cached.trace) == len(recomputed.trace)
    for ours, theirs in zip(cached.trace, recomputed.trace):
        assert torch.equal(ours.committed, theirs.committed)
        torch.testing.assert_close(ours.confidence, theirs.confidence, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert (cached.generated != MASK).all() and cached.generated.shape == (len(PROMPTS), settings.get("gen_length", 12))


def reference_one_token_per_step(model, prompt, gen_length, block_size):
    """Greedy, one token per step, lowest confidence last, written as a plain loop over positions: the row grows a
    whole block at a time (blocks aligned to position 0; masks past the end are seen, never filled), each step runs
    the whole row with a block-causal mask."""
    row = list(prompt)
    end = len(prompt) + gen_length
    while MASK in row[:end] or len(row) < end:
        row += [MASK] * ((len(row) // block_size + 1) * block_size - len(row))
        while MASK in row[:end]:
            length = len(row)
            index = torch.arange(length)
            allowed = (index[None, :] // block_size <= index[:, None] // block_size)[None, None]
            logits = model(input_ids=torch.tensor([row]), attention_mask=additive_mask(allowed)).logits[0].double()
            logits[:, MASK] = float("-inf")
            probs = torch.softmax(logits.float(), -1)
            best, best_p = None, -1.0
            for i in range(min(length, end)):
                if row[i] == MASK and probs[i].max() > best_p:
                    best, best_p = i, probs[i].max().item()
            row[best] = int(logits[best].argmax())
    return row[len(prompt) : end]


def test_one_token_per_step_matches_a_plain_loop(model):
    result = sample(model, trace=True)
    for frame in result.trace:
        assert int(frame.committed.sum()) == sum(block >= 0 for block in frame.blocks)  # one per working row
    for row, prompt in enumerate(PROMPTS):
        assert result.generated[row].tolist() == reference_one_token_per_step(model, prompt, 12, 4)


@pytest.mark.parametrize(
    "settings",
    [
        {"shift": True, "block_length": 2, "steps": 6},
        {"threshold": 0.03, "steps": 3},
    ],
)
def test_rows_sampled_together_equal_rows_sampled_alone(model, settings):
    """Rows at different columns (their blocks gathered) and a batch of one, or of one prompt three times (every row
    at one column: the blocks are slices of the rows), give the same tokens."""
    together = sample(model, **settings)
    for row, prompt in enumerate(PROMPTS):
        alone = sample(model, [prompt], **settings)
        assert torch.equal(together.generated[row], alone.generated[0])
        assert together.row_nfe[row] <= together.nfe
    repeated = sample(model, [PROMPTS[1]] * 3, **settings)
    assert torch.equal(repeated.generated, together.generated[1].expand(3, -1))


def test_nfe_counts_every_forward(model):
    for use_cache in (True, False):
        calls, handle = count_calls(model)
        try:
            result = sample(model, use_cache=use_cache)
        finally:
            handle.remove()
        assert result.nfe == len(calls)
    # one forward per step: the prompt's whole blocks and each finished block ride along with the next step
    steps = len(sample(model, trace=True).trace)
    assert steps == 12
    prompt_only = sample(model, [[5, 6, 7, 8, 9]])  # 5 prompt tokens: 3 tokens finish block 1, then 2 blocks + 1
    assert prompt_only.nfe == 12 and prompt_only.row_nfe == [12]


def test_each_step_feeds_the_uncached_finished_blocks_with_the_current_one(model):
    widths = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        sample(model, [[5, 6, 7, 8, 9]])
    finally:
        handle.remove()
    # block 1 (positions 4-7) with the prompt's block 0 at its first step; then blocks 2, 3 and 4 (its 1 token),
    # each with the block just finished at its first step
    assert widths == [8, 4, 4] + [8, 4, 4, 4] + [8, 4, 4, 4] + [8]


def test_cache_equals_recomputing_when_no_prompt_fills_a_block(model):
    # the first blocks start at the prompts' first tokens: nothing is cached before the first step (the sampler
    # before the shared cache failed here)
    settings = {"threshold": 0.05, "shift": True, "block_length": 2, "steps": 6}
    prompts = [[13], [18, 21, 24], [5]]
    cached = sample(model, prompts, **settings)
    assert torch.equal(cached.sequences, sample(model, prompts, use_cache=False, **settings).sequences)


def test_threshold_commits_every_confident_prediction(model):
    result = sample(model, threshold=0.031, steps=3, trace=True)
    confident = 0
    for frame in result.trace:
        scores = frame.confidence[frame.committed]
        for row in range(len(PROMPTS)):
            row_scores = frame.confidence[row][frame.committed[row]]
            if len(row_scores) > 1:
                assert (row_scores >= 0.031).all()
                confident += 1
        assert len(scores) >= sum(block >= 0 for block in frame.blocks)
    assert confident > 0 and len(result.trace) < 12
    everything = sample(model, threshold=0.0, steps=3, trace=True)
    assert len(everything.trace) == 4  # the first blocks start inside the prompts: at most 4 blocks per row
    never = sample(model, threshold=1.01, steps=3)
    assert torch.equal(never.sequences, sample(model).sequences)  # the single best each step: low confidence


def eos_model():
    net = make_tiny_llama(VOCAB, seed=4, max_position_embeddings=64)
    net.lm_head.register_forward_hook(
        lambda module, args, output: output.index_add(
            -1, torch.tensor([EOS]), torch.full((*output.shape[:-1], 1), 50.0)
        )
    )
    return net


def test_eos_stops_a_row_at_the_end_of_its_block():
    net = eos_model()
    stopped = sample(net, [[5, 6, 7, 8, 9, 10]], eos_token_id=EOS, eos_handling="stop")
    assert (stopped.generated == EOS).all()
    assert stopped.nfe == 2  # the two tokens completing its second block: no other block
    kept_going = sample(net, [[5, 6, 7, 8, 9, 10]], eos_token_id=EOS)
    assert kept_going.nfe == 12
    forbidden = sample(net, [[5, 6, 7, 8, 9, 10]], eos_token_id=EOS, eos_handling="forbid")
    assert not (forbidden.generated == EOS).any()


def test_refusals(model):
    with pytest.raises(ValueError, match="needs 68 positions; the model has 64"):
        sample(model, [[5] * 50], gen_length=16, steps=16)
    sample(model, [[5] * 48], gen_length=16, steps=16)  # exactly the 64 positions
    with pytest.raises(ValueError, match="must divide the model's block size 4"):
        sample(model, block_length=3, gen_length=12)
    with pytest.raises(ValueError, match="no classifier-free guidance"):
        sample(model, guidance_scale=1.0)
    with pytest.raises(ValueError, match="always on"):
        sample(model, cache="prefix")
    with pytest.raises(ValueError, match="every prompt needs a token"):
        sample(model, [[]], shift=True)


def test_trace_renders_as_text_and_gif(tmp_path):
    from PIL import Image

    from conftest import make_byte_tokenizer
    from diff_trainer.sampling.render import TokenPieces, render_gif, render_text

    tokenizer = make_byte_tokenizer()
    net = make_tiny_llama(len(tokenizer), seed=5, max_position_embeddings=64)
    prompt = tokenizer("abcdef", add_special_tokens=False).input_ids
    result = generate(
        net,
        [prompt],
        mask_token_id=tokenizer.mask_token_id,
        gen_length=8,
        steps=8,
        block_size=4,
        block_length=2,
        trace=True,
    )
    assert len(result.trace) == 8 and all(frame.sequences.shape == result.sequences.shape for frame in result.trace)
    headers = [
        render_text(frame, 0, TokenPieces(tokenizer), tokenizer.mask_token_id, color=False).split("\n")[0]
        for frame in result.trace
    ]
    # the prompt's tail fills half of the first block: 2 steps there, then 4 in each of the next two blocks
    assert [header.split("  ")[1] for header in headers] == ["block 1"] * 2 + ["block 2"] * 4 + ["block 3"] * 2
    assert render_gif(result.trace, tmp_path / "blocks.gif", tokenizer, tokenizer.mask_token_id, duration_ms=50) == 8
    with Image.open(tmp_path / "blocks.gif") as gif:
        assert gif.n_frames == 8
