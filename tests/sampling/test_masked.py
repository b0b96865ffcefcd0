"""Samplers: schedules, strategies, guidance, threshold decoding, EOS handling, padding, shift and traces."""

from types import SimpleNamespace

import pytest
import torch

from conftest import make_tiny_llama
from diff_trainer.sampling.masked import (
    SamplerConfig,
    chosen_probability,
    generate,
    guided_logits,
    negative_entropy,
    num_transfer_tokens,
    padded_position_ids,
    random_confidence,
    sample_tokens,
    select_most_confident,
    special_token_ids_to_forbid,
    top2_margin,
)

VOCAB = 40
MASK = 39
EOS = 1


@pytest.fixture(scope="module")
def model():
    # A larger init spreads the logits, so near-ties (and float noise flipping them) are unlikely.
    return make_tiny_llama(VOCAB, initializer_range=0.5, seed=1)


class StubModel(torch.nn.Module):
    """A 'model' whose logits are `logits_fn(input_ids)`; it records every input it is called with."""

    def __init__(self, logits_fn, context=512):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=context)
        self.logits_fn = logits_fn
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls.append(
            SimpleNamespace(input_ids=input_ids.clone(), attention_mask=attention_mask, position_ids=position_ids)
        )
        return SimpleNamespace(logits=self.logits_fn(input_ids))


def sample(model, prompts, gen_length=12, **settings):
    """generate() with the mask id of these tests; one step per token and a single block unless told."""
    settings.setdefault("steps", gen_length)
    return generate(model, prompts, mask_token_id=MASK, gen_length=gen_length, **settings)


# --- schedule and pieces ------------------------------------------------------------------------------------


def test_num_transfer_tokens_spreads_the_remainder_over_the_first_steps():
    counts = num_transfer_tokens(torch.tensor([10, 7, 0, 4]), steps=4)
    assert counts.tolist() == [[3, 3, 2, 2], [2, 2, 2, 1], [0, 0, 0, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize(
    "gen_length,block_length,steps,expected",
    [
        (10, 10, 4, [3, 3, 2, 2]),
        (12, 6, 4, [3, 3, 3, 3]),
        (12, 4, 6, [2, 2, 2, 2, 2, 2]),
        (9, 3, 6, [2, 1, 2, 1, 2, 1]),
    ],
)
def test_committed_tokens_per_step_follow_the_schedule(model, gen_length, block_length, steps, expected):
    result = sample(model, [[5, 6, 7], [8]], gen_length=gen_length, block_length=block_length, steps=steps, trace=True)
    for frame in result.trace:
        assert frame.committed.sum(-1).tolist() == [expected[frame.step]] * 2
        # every commit lies inside the current block
        start = result.generation_start + frame.blocks[0] * block_length
        assert not frame.committed[:, :start].any() and not frame.committed[:, start + block_length :].any()
    steps_per_block = steps // (gen_length // block_length)
    assert [f.blocks for f in result.trace] == [[step // steps_per_block] * 2 for step in range(steps)]


def test_gumbel_max_draws_follow_softmax_at_the_temperature():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    for temperature in (0.5, 2.0):
        draws = sample_tokens(logits.expand(40000, 4), temperature, torch.Generator().manual_seed(0))
        frequencies = torch.bincount(draws, minlength=4).double() / draws.numel()
        expected = torch.softmax(logits.double() / temperature, -1)
        assert torch.allclose(frequencies, expected, atol=0.01)  # std of a frequency is at most 0.0025


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -2.0], [5.0, 4.0, 0.0]])
    assert sample_tokens(logits, 0.0).tolist() == [1, 0]


def test_confidence_strategies_by_hand():
    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]], dtype=torch.float64)
    chosen = torch.tensor([[1, 2]])
    assert torch.allclose(chosen_probability(probs, chosen, None), torch.tensor([[0.3, 0.8]], dtype=torch.float64))
    assert torch.allclose(top2_margin(probs, chosen, None), torch.tensor([[0.2, 0.7]], dtype=torch.float64))
    entropy = -(probs * probs.log()).sum(-1)
    assert torch.allclose(negative_entropy(probs, chosen, None), -entropy)
    one_hot = torch.tensor([[[0.0, 1.0, 0.0]]], dtype=torch.float64)
    assert negative_entropy(one_hot, chosen[:, :1], None).item() == 0.0
    first = random_confidence(probs, chosen, torch.Generator().manual_seed(3))
    uniform = torch.rand(chosen.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(first, uniform)  # U[0,1) noise whatever the probabilities
    assert torch.equal(random_confidence(probs.flip(-1), chosen, torch.Generator().manual_seed(3)), uniform)


def test_select_most_confident_takes_the_top_candidates_leftmost_on_ties():
    confidence = torch.tensor([[0.9, 0.5, 0.5, 0.99, 0.1], [0.2, 0.3, 0.3, 0.3, 0.0]])
    candidates = torch.tensor([[True, True, True, False, True], [True, True, True, True, True]])
    chosen = select_most_confident(confidence, candidates, torch.tensor([2, 2]))
    assert chosen.tolist() == [[True, True, False, False, False], [False, True, True, False, False]]
    # never more than there are candidates
    none = select_most_confident(confidence, torch.zeros_like(candidates), torch.tensor([3, 3]))
    assert not none.any()


def test_guided_logits_formula():
    cond, un = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    assert guided_logits(cond, un, 2.0).tolist() == [3.0, 4.0]  # un + 3 (cond - un)
    assert torch.equal(guided_logits(cond, un, 0.0), cond)


# --- the loop on a tiny random model ------------------------------------------------------------------------


def test_prompts_are_kept_and_every_mask_is_filled_exactly_once(model):
    prompts = [[5, MASK, 7], [8, 9, 10, 11, 12], [13]]
    result = sample(model, prompts, gen_length=8, block_length=4, steps=4, trace=True)
    start = result.generation_start
    for row, prompt in enumerate(prompts):
        assert result.sequences[row, start - len(prompt) : start].tolist() == prompt  # even its mask token
        assert result.attention_mask[row, :start].sum() == len(prompt)
    assert not (result.generated == MASK).any()
    commits = torch.stack([f.committed for f in result.trace]).sum(0)
    assert commits[:, :start].sum() == 0 and (commits[:, start:] == 1).all()
    # a committed token never changes afterwards
    for before, after in zip(result.trace, result.trace[1:]):
        kept = before.sequences != MASK
        assert torch.equal(before.sequences[kept], after.sequences[kept])


@pytest.mark.parametrize("remasking", ["low_confidence", "random", "margin", "entropy"])
def test_every_strategy_fills_all_masks_on_schedule(model, remasking):
    result = sample(model, [[5, 6]], gen_length=8, steps=4, block_length=8, remasking=remasking, seed=0, trace=True)
    assert [int(f.committed.sum()) for f in result.trace] == [2, 2, 2, 2]
    assert not (result.generated == MASK).any()
    assert result.nfe == 4


def test_random_remasking_commits_each_position_first_equally_often(model):
    first = {}
    for remasking in ("random", "low_confidence"):  # 400 copies of one prompt, greedy tokens
        result = sample(model, [[5, 6]] * 400, gen_length=4, remasking=remasking, seed=0, trace=True)
        first[remasking] = result.trace[0].committed[:, result.generation_start :].double()
    assert (first["random"].sum(dim=1) == 1).all()
    frequencies = first["random"].mean(dim=0)
    assert torch.allclose(frequencies, torch.full((4,), 0.25, dtype=torch.float64), atol=0.07)  # 3.2 std
    assert (first["low_confidence"] == first["low_confidence"][0]).all()  # always the most confident one


def test_seed_makes_sampling_repeatable(model):
    greedy = [sample(model, [[5, 6, 7]], temperature=0.0).sequences for _ in range(2)]
    assert torch.equal(*greedy)
    settings = dict(temperature=1.0, remasking="random")
    first, second = (sample(model, [[5, 6, 7]], seed=3, **settings).sequences for _ in range(2))
    other = sample(model, [[5, 6, 7]], seed=4, **settings).sequences
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_guidance_scale_zero_equals_no_guidance(model):
    plain = sample(model, [[5, 6, 7], [8]], gen_length=8, steps=4)
    unguided = sample(model, [[5, 6, 7], [8]], gen_length=8, steps=4, guidance_scale=0.0)
    guided = sample(model, [[5, 6, 7], [8]], gen_length=8, steps=4, guidance_scale=2.0)
    assert torch.equal(plain.sequences, unguided.sequences) and plain.nfe == unguided.nfe == 4
    assert guided.nfe == 8  # a conditional and an unconditional evaluation per step
    assert not (guided.generated == MASK).any()


def test_guidance_masks_the_prompt_in_the_unconditional_pass():
    # The first prompt token is a mask only in the unconditional pass; w=1 gives un + 2(cond − un).
    def logits_fn(ids):
        logits = torch.zeros(*ids.shape, VOCAB)
        conditional = ids[:, :1] != MASK  # the first prompt token is masked only in the unconditional pass
        logits[..., 3] = torch.where(conditional, 2.0, 0.0)
        logits[..., 4] = torch.where(conditional, 1.5, 1.0)
        return logits

    stub = StubModel(logits_fn)
    result = sample(stub, [[5, 6], [7, 8]], gen_length=4, steps=2, guidance_scale=1.0)
    call = stub.calls[0]
    assert call.input_ids.shape[0] == 4
    assert torch.equal(call.input_ids[:2, :2], torch.tensor([[5, 6], [7, 8]]))
    assert (call.input_ids[2:, :2] == MASK).all()
    assert (result.generated == 3).all()  # guided: token 3 -> 0 + 2·2 = 4, token 4 -> 1 + 2·0.5 = 2


def test_guidance_can_change_the_choice():
    # cond prefers 4 slightly (1.1 vs 1.0); un prefers 4 strongly, so guidance pushes towards 3.
    def logits_fn(ids):
        logits = torch.zeros(*ids.shape, VOCAB)
        conditional = ids[:, :1] != MASK
        logits[..., 3] = 1.0
        logits[..., 4] = torch.where(conditional, 1.1, 3.0)
        return logits

    assert (sample(StubModel(logits_fn), [[5]], gen_length=2, steps=1).generated == 4).all()
    assert (sample(StubModel(logits_fn), [[5]], gen_length=2, steps=1, guidance_scale=1.0).generated == 3).all()


def test_threshold_one_commits_one_per_step_and_zero_a_block_per_step(model):
    strict = sample(model, [[5, 6]], gen_length=8, block_length=4, threshold=1.0, trace=True)
    assert strict.nfe == 8 and [int(f.committed.sum()) for f in strict.trace] == [1] * 8
    loose = sample(model, [[5, 6]], gen_length=8, block_length=4, threshold=0.0, trace=True)
    assert loose.nfe == 2 and [int(f.committed.sum()) for f in loose.trace] == [4, 4]
    assert not (strict.generated == MASK).any() and not (loose.generated == MASK).any()
    # steps are not used with a threshold, even a number that would not fit the blocks
    assert sample(model, [[5, 6]], gen_length=8, block_length=1, steps=3, threshold=0.5).nfe == 8


def test_threshold_commits_every_confident_position():
    # Positions 0 and 2 of the generation are near-certain, the others are not.
    def logits_fn(ids):
        logits = torch.zeros(*ids.shape, VOCAB)
        logits[:, 1, 7] = 20.0
        logits[:, 3, 8] = 20.0
        logits[:, 2:, 9] = 1.0
        return logits

    result = sample(StubModel(logits_fn), [[5]], gen_length=4, threshold=0.9, trace=True)
    assert result.trace[0].committed[0].tolist() == [False, True, False, True, False]
    assert [int(f.committed.sum()) for f in result.trace] == [2, 1, 1]


@pytest.mark.parametrize(
    "settings",
    [
        dict(steps=4),
        dict(threshold=0.5),  # rows need different numbers of steps per block
        dict(threshold=0.5, cache="dual"),
        dict(steps=8, cache="prefix", guidance_scale=1.0),
    ],
)
def test_batched_generation_equals_one_by_one(model, settings):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    batched = sample(model, prompts, gen_length=8, block_length=4, **settings)
    for row, prompt in enumerate(prompts):
        alone = sample(model, [prompt], gen_length=8, block_length=4, **settings)
        assert torch.equal(batched.generated[row], alone.generated[0])
        assert batched.row_nfe[row] == alone.nfe == alone.row_nfe[0]


def confident_for_prompt_seven(ids):
    """Rows whose first token is 7 are sure of token 20 everywhere; other rows hesitate between 20 and 21."""
    logits = torch.zeros(*ids.shape, VOCAB)
    sure = ids[:, :1] == 7
    logits[..., 20] = torch.where(sure, 20.0, 1.0)
    logits[..., 21] = 0.9
    return logits


def test_rows_advance_through_their_blocks_independently_and_leave_when_done():
    stub = StubModel(confident_for_prompt_seven)
    result = sample(stub, [[7, 8], [9, 8]], gen_length=8, block_length=4, threshold=0.9, trace=True)
    # row 0 commits a whole block per step (2 steps), row 1 one token per step (8 steps)
    assert result.row_nfe == [2, 8] and result.nfe == 8
    assert [call.input_ids.shape[0] for call in stub.calls] == [2, 2] + [1] * 6
    assert [f.blocks for f in result.trace] == [[0, 0], [1, 0], [-1, 0], [-1, 0], [-1, 1], [-1, 1], [-1, 1], [-1, 1]]
    second = result.trace[1].committed[0, result.generation_start :]
    assert second.tolist() == [False] * 4 + [True] * 4  # row 0 is already in its second block
    assert result.generated.tolist() == [[20] * 8, [20] * 8]
    assert stub.calls[2].input_ids.tolist() == [[9, 8, 20, 20, MASK, MASK, MASK, MASK, MASK, MASK]]


def test_tensor_prompts_with_attention_mask_equal_lists(model):
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    from_tensor = sample(model, ids, attention_mask=mask, gen_length=4, steps=4)
    from_lists = sample(model, [[5, 6], [7, 8, 9, 10]], gen_length=4, steps=4)
    assert torch.equal(from_tensor.generated, from_lists.generated)


def test_padded_rows_see_positions_from_zero():
    stub = StubModel(lambda ids: torch.zeros(*ids.shape, VOCAB))
    sample(stub, [[5], [6, 7, 8]], gen_length=2, steps=1)
    call = stub.calls[0]
    assert call.attention_mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert call.position_ids.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_shift_reads_the_logits_of_the_previous_position():
    # The logits at position i favour token 10 + i.
    def logits_fn(ids):
        favourite = 10 + torch.arange(ids.shape[1])
        return torch.nn.functional.one_hot(favourite, VOCAB).float().expand(ids.shape[0], -1, -1) * 5

    plain = sample(StubModel(logits_fn), [[5, 6]], gen_length=4, steps=2)
    shifted = sample(StubModel(logits_fn), [[5, 6]], gen_length=4, steps=2, shift=True)
    assert plain.generated.tolist() == [[12, 13, 14, 15]]
    assert shifted.generated.tolist() == [[11, 12, 13, 14]]


def test_a_shift_model_samples(model):
    result = sample(
        model, [[5, 6], [7]], gen_length=8, steps=4, block_length=4, shift=True, seed=0, temperature=1.0, trace=True
    )
    assert not (result.generated == MASK).any() and len(result.trace) == 4
    with pytest.raises(ValueError, match="every prompt needs a token"):
        sample(model, [[5], []], shift=True)


def test_trace_has_one_frame_per_step_and_the_hook_sees_them(model):
    seen = []
    result = sample(model, [[5, 6]], gen_length=8, steps=4, block_length=4, trace=True, on_step=seen.append)
    assert len(result.trace) == 4 == result.nfe
    assert [f.step for f in seen] == [0, 1, 2, 3]
    assert torch.equal(seen[-1].sequences, result.sequences)
    frame = result.trace[0]
    assert torch.isnan(frame.confidence[~frame.committed]).all()
    assert ((frame.confidence[frame.committed] > 0) & (frame.confidence[frame.committed] <= 1)).all()
    assert sample(model, [[5, 6]], gen_length=8, steps=4).trace is None


# --- EOS handling ---------------------------------------------------------------------------------------------


def eos_for_prompt_seven(ids):
    """Rows whose first token is 7 predict EOS everywhere; other rows predict token 20."""
    logits = torch.zeros(*ids.shape, VOCAB)
    wants_eos = ids[:, :1] == 7
    logits[..., EOS] = torch.where(wants_eos, 5.0, 0.0)
    logits[..., 20] = torch.where(wants_eos, 0.0, 5.0)
    return logits


def test_stop_fills_the_rest_with_eos_after_a_block_with_eos():
    alone = sample(
        StubModel(eos_for_prompt_seven),
        [[7, 8]],
        gen_length=8,
        block_length=4,
        steps=4,
        eos_token_id=EOS,
        eos_handling="stop",
    )
    assert alone.generated.tolist() == [[EOS] * 8]
    assert alone.nfe == 2  # the second block is never sampled
    both = sample(
        StubModel(eos_for_prompt_seven),
        [[7, 8], [9, 8]],
        gen_length=8,
        block_length=4,
        steps=4,
        eos_token_id=EOS,
        eos_handling="stop",
    )
    assert both.generated.tolist() == [[EOS] * 8, [20] * 8]
    assert both.nfe == 4 and both.row_nfe == [2, 4]  # the finished row left the batch after its first block


def test_forbid_never_predicts_eos():
    result = sample(
        StubModel(eos_for_prompt_seven), [[7, 8]], gen_length=4, steps=4, eos_token_id=EOS, eos_handling="forbid"
    )
    assert not (result.generated == EOS).any()
    assert not (result.generated == MASK).any()


# --- special tokens -----------------------------------------------------------------------------------------

DFF, PAD = 30, 0


def prefers_markers(ids):
    """Every position prefers <DFF> (9), then padding (8), then EOS at the last position (7), then token 21 (6)."""
    logits = torch.zeros(*ids.shape, VOCAB)
    logits[..., DFF], logits[..., PAD], logits[..., 21] = 9.0, 8.0, 6.0
    logits[:, -1, EOS] = 7.0
    return logits


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_forbidden_special_tokens_are_never_committed_but_eos_still_is(temperature):
    unrestricted = sample(StubModel(prefers_markers), [[5, 6]], gen_length=4, eos_token_id=EOS, seed=0)
    assert unrestricted.generated.tolist() == [[DFF] * 4]
    for seed in range(5):
        result = sample(
            StubModel(prefers_markers),
            [[5, 6]],
            gen_length=4,
            eos_token_id=EOS,
            temperature=temperature,
            forbidden_token_ids=(PAD, DFF),
            seed=seed,
        )
        assert not torch.isin(result.generated, torch.tensor([DFF, PAD, MASK])).any()
        if temperature == 0:
            assert result.generated.tolist() == [[21, 21, 21, EOS]]


def test_special_token_ids_to_forbid_are_all_specials_but_eos():
    from transformers import ByT5Tokenizer

    from diff_trainer.models.loading import add_special_tokens

    tokenizer = ByT5Tokenizer()
    add_special_tokens(tokenizer, "<DFF>", "<|mdm_mask|>")
    forbidden = special_token_ids_to_forbid(tokenizer)
    dff, mask = tokenizer.convert_tokens_to_ids(["<DFF>", "<|mdm_mask|>"])
    assert {dff, mask, tokenizer.pad_token_id, tokenizer.unk_token_id} <= set(forbidden)
    assert tokenizer.eos_token_id not in forbidden
    assert not set(forbidden) & set(tokenizer.encode("0123456789+-=abc", add_special_tokens=False))


def test_forbidding_eos_through_the_special_tokens_is_refused():
    with pytest.raises(ValueError, match="eos_handling='forbid'"):
        SamplerConfig(mask_token_id=MASK, eos_token_id=EOS, forbidden_token_ids=(DFF, EOS))


def test_rank_last_commits_eos_predictions_after_the_others():
    # EOS is very likely at generation positions 0 and 1, token 20 is less likely at positions 2 and 3.
    def logits_fn(ids):
        logits = torch.zeros(*ids.shape, VOCAB)
        logits[:, 1:3, EOS] = 9.0
        logits[:, 3:, 20] = 3.0
        return logits

    settings = dict(gen_length=4, steps=4, eos_token_id=EOS, trace=True)
    first_position = lambda result: [int(f.committed[0].nonzero()[0]) for f in result.trace]  # noqa: E731
    assert first_position(sample(StubModel(logits_fn), [[5]], **settings))[:2] == [1, 2]
    ranked = sample(StubModel(logits_fn), [[5]], eos_handling="rank_last", **settings)
    assert first_position(ranked) == [3, 4, 1, 2]
    assert ranked.generated.tolist() == [[EOS, EOS, 20, 20]]


EOT = 2  # a second stop id, as LLaDA's <|eot_id|> beside its <|endoftext|>


def eot_for_prompt_seven(ids):
    """Rows whose first token is 7 predict EOT (not EOS) everywhere; other rows predict token 20."""
    return eos_for_prompt_seven(ids)[..., [0, EOT, EOS, *range(3, VOCAB)]]


def test_any_of_several_stop_ids_ends_a_row_which_is_then_filled_with_the_first():
    result = sample(
        StubModel(eot_for_prompt_seven),
        [[7, 8], [9, 8]],
        gen_length=8,
        block_length=4,
        steps=4,
        eos_token_id=[EOS, EOT],
        eos_handling="stop",
    )
    assert result.generated.tolist() == [[EOT] * 4 + [EOS] * 4, [20] * 8]
    assert result.nfe == 4
    only_eos = sample(
        StubModel(eot_for_prompt_seven),
        [[7, 8]],
        gen_length=8,
        block_length=4,
        steps=4,
        eos_token_id=EOS,
        eos_handling="stop",
    )
    assert only_eos.generated.tolist() == [[EOT] * 8] and only_eos.nfe == 4  # EOT alone does not stop


def test_forbid_and_rank_last_cover_every_stop_id():
    forbidden = sample(
        StubModel(eot_for_prompt_seven), [[7, 8]], gen_length=4, steps=4, eos_token_id=(EOS, EOT), eos_handling="forbid"
    )
    assert not torch.isin(forbidden.generated, torch.tensor([EOS, EOT, MASK])).any()

    def logits_fn(ids):
        logits = torch.zeros(*ids.shape, VOCAB)
        logits[:, 1, EOS] = 9.0
        logits[:, 2, EOT] = 9.0
        logits[:, 3:, 20] = 3.0
        return logits

    ranked = sample(
        StubModel(logits_fn),
        [[5]],
        gen_length=4,
        steps=4,
        eos_token_id=[EOS, EOT],
        eos_handling="rank_last",
        trace=True,
    )
    assert [int(f.committed[0].nonzero()[0]) for f in ranked.trace] == [3, 4, 1, 2]


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(gen_length=10, block_length=4), "multiple of block_length"),
        (dict(gen_length=12, block_length=4, steps=8), "multiple of the number of blocks"),
        (dict(gen_length=8, block_length=4, steps=3), "multiple of the number of blocks"),
        (dict(gen_length=4, steps=8), "exceed block_length"),
        (dict(remasking="random", threshold=0.9), "cannot be combined"),
        (dict(remasking="best"), "remasking must be one of"),
        (dict(eos_handling="stop"), "needs eos_token_id"),
        (dict(temperature=-1.0), "temperature"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**{"mask_token_id": MASK, "gen_length": 8, "steps": 8, **settings})


def test_a_prompt_longer_than_the_context_is_refused():
    stub = StubModel(lambda ids: torch.zeros(*ids.shape, VOCAB), context=16)
    with pytest.raises(ValueError, match="exceeds the model's context of 16"):
        sample(stub, [[5] * 10], gen_length=8, steps=8)


# --- key/value caches (Fast-dLLM) -----------------------------------------------------------------------------


def make_tiny_qwen2(seed=1, **overrides):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,
    )
    config = Qwen2Config(**{**settings, **overrides})
    config.is_causal = False
    return AutoModelForCausalLM.from_config(config).eval()


ONE_LAYER_MODELS = {
    "llama": lambda: make_tiny_llama(VOCAB, initializer_range=0.5, seed=1, num_hidden_layers=1),
    "qwen2": lambda: make_tiny_qwen2(num_hidden_layers=1),
}


@pytest.mark.parametrize("architecture", list(ONE_LAYER_MODELS))
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_with_one_layer_the_cache_is_exact(architecture, cache):
    # One layer: a position's keys/values depend on its own token only, and reused ones belong to unchanged tokens.
    one_layer = ONE_LAYER_MODELS[architecture]()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [15]]
    for settings in (
        dict(steps=8),
        dict(threshold=0.3),
        dict(steps=8, guidance_scale=1.0, shift=True),
        dict(steps=8, suffix_ids=[30, 31]),
    ):
        plain = sample(one_layer, prompts, gen_length=8, block_length=4, **settings)
        cached = sample(one_layer, prompts, gen_length=8, block_length=4, cache=cache, **settings)
        assert torch.equal(cached.generated, plain.generated), settings
        assert cached.row_nfe == plain.row_nfe


class LogitsRecorder(torch.nn.Module):
    """Wraps a model; checks each full-length cached call's logits against a plain forward of the same input."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config
        self.full_calls = self.cached_calls = 0

    def get_base_model(self):  # as a peft wrapper: the sampler reads the cache keyword's name from it
        return self.model

    def forward(self, input_ids, attention_mask, position_ids, **cache):
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **cache)
        if cache and input_ids.shape[1] == attention_mask.shape[1]:  # the block's first step: everything is fed
            plain = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
            assert torch.equal(output.logits, plain.logits)
            self.full_calls += 1
        elif cache:
            self.cached_calls += 1
        return output


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_the_first_step_of_a_block_uses_the_uncached_logits(model, cache):
    recorder = LogitsRecorder(model)
    result = sample(recorder, [[5, 6, 7], [8]], gen_length=12, block_length=4, steps=12, cache=cache)
    assert recorder.full_calls == 3 and recorder.cached_calls == 9 and result.nfe == 12
    # one step per block: every step is a block's first, so the cache changes nothing
    one_step = dict(gen_length=12, block_length=4, steps=3)
    assert torch.equal(
        sample(model, [[5, 6, 7], [8]], cache=cache, **one_step).generated,
        sample(model, [[5, 6, 7], [8]], **one_step).generated,
    )


def stale_reference_logits(model, before, now, attention_mask, window_starts, window_width):
    """Independent implementation of the cached forward: a plain forward of `now` in which, at every layer, the
    key and value projections of positions outside each row's window are those computed from `before`."""
    from diff_trainer.sampling.masked import padded_position_ids

    positions = padded_position_ids(attention_mask)
    projections = [layer.self_attn.k_proj for layer in model.model.layers]
    projections += [layer.self_attn.v_proj for layer in model.model.layers]
    recorded = {}
    handles = [p.register_forward_hook(lambda m, i, out: recorded.__setitem__(m, out)) for p in projections]
    model(input_ids=before, attention_mask=attention_mask, position_ids=positions)
    for handle in handles:
        handle.remove()
    index = torch.arange(now.shape[1])
    outside = ~((index >= window_starts[:, None]) & (index < window_starts[:, None] + window_width))
    handles = [
        p.register_forward_hook(lambda m, i, out: torch.where(outside[..., None], recorded[m], out))
        for p in projections
    ]
    logits = model(input_ids=now, attention_mask=attention_mask, position_ids=positions).logits
    for handle in handles:
        handle.remove()
    return logits


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_logits_equal_a_forward_with_stale_keys_and_values_outside_the_window(model, cache):
    from diff_trainer.sampling.masked import _Denoiser

    # Row 0 (left padded) is in its first block, row 1 in its second: the windows differ per row.
    x = torch.tensor(
        [
            [0, 0, 5, 6, MASK, MASK, MASK, MASK, MASK, MASK, MASK, MASK],
            [7, 8, 9, 10, 21, 22, 23, 24, MASK, MASK, MASK, MASK],
        ]
    )
    attention = torch.tensor([[0, 0] + [1] * 10, [1] * 12])
    config = SamplerConfig(mask_token_id=MASK, gen_length=8, block_length=4, steps=8, cache=cache)
    denoise = _Denoiser(model, config, attention, is_prompt=torch.zeros_like(x, dtype=torch.bool))
    rows, starts = torch.tensor([0, 1]), torch.tensor([4, 8])
    first = denoise(x, rows, starts, refresh=torch.tensor([True, True]))
    plain = model(input_ids=x, attention_mask=attention, position_ids=padded_position_ids(attention)).logits
    assert torch.equal(first, torch.stack([plain[0, 4:8], plain[1, 8:12]]).double())
    later = x.clone()
    later[0, 5], later[1, 9] = 30, 31  # one token committed in each row's block
    cached = denoise(later, rows, starts, refresh=torch.tensor([False, False]))
    width = 4 if cache == "dual" else 12
    reference = stale_reference_logits(model, x, later, attention, starts, width)
    expected = torch.stack([reference[0, 4:8], reference[1, 8:12]]).double()
    assert torch.allclose(cached, expected, atol=1e-5)
    fresh = model(input_ids=later, attention_mask=attention, position_ids=padded_position_ids(attention)).logits
    assert not torch.allclose(cached, torch.stack([fresh[0, 4:8], fresh[1, 8:12]]).double(), atol=1e-3)
    assert denoise.forwards == 2


def test_a_cache_is_refused_for_models_that_cannot_take_one():
    stub = StubModel(lambda ids: torch.zeros(*ids.shape, VOCAB))
    with pytest.raises(ValueError, match="cache='prefix' needs a bidirectional"):
        sample(stub, [[5]], gen_length=4, cache="prefix")
    with pytest.raises(ValueError, match="is_causal=True"):
        sample(make_tiny_llama(VOCAB, bidirectional=False), [[5]], gen_length=4, cache="dual")
    with pytest.raises(ValueError, match="cache must be one of"):
        SamplerConfig(mask_token_id=MASK, cache="full")


# --- LLaDA parity ---------------------------------------------------------------------------------------------


def llada_generate(model, prompt, steps, gen_length, block_length, mask_id, suffix=()):
    """LLaDA's generate.py (greedy, low_confidence, no guidance) written out independently, with the sampler's one
    deliberate difference: the mask id itself is never predicted (its logit is set to -inf first). A `suffix` is
    appended after the masks and never changed (infilling)."""
    x = torch.cat(
        [
            prompt,
            torch.full((prompt.shape[0], gen_length), mask_id),
            torch.tensor([list(suffix)] * prompt.shape[0], dtype=torch.long).reshape(prompt.shape[0], -1),
        ],
        dim=1,
    )
    blocks = gen_length // block_length
    for block in range(blocks):
        end = prompt.shape[1] + (block + 1) * block_length
        masks_in_block = (x[:, end - block_length : end] == mask_id).sum(1, keepdim=True)
        per_step = steps // blocks
        counts = (masks_in_block // per_step).repeat(1, per_step)
        for row in range(x.shape[0]):
            counts[row, : int(masks_in_block[row] % per_step)] += 1
        for step in range(per_step):
            logits = model(input_ids=x).logits
            logits[..., mask_id] = float("-inf")
            predicted = logits.argmax(-1)
            probability = torch.softmax(logits.double(), -1).gather(-1, predicted[..., None]).squeeze(-1)
            masked = x == mask_id
            masked[:, end:] = False
            confidence = torch.where(masked, probability, float("-inf"))
            for row in range(x.shape[0]):
                chosen = torch.topk(confidence[row], k=int(counts[row, step])).indices
                x[row, chosen] = predicted[row, chosen]
    return x


@pytest.mark.parametrize("gen_length,block_length,steps", [(8, 8, 8), (12, 4, 6), (8, 4, 8)])
def test_greedy_sampling_is_token_identical_to_llada_generate(model, gen_length, block_length, steps):
    prompts = torch.tensor([[5, 6, 7], [9, 10, 11]])
    expected = llada_generate(model, prompts, steps, gen_length, block_length, MASK)
    result = sample(model, prompts, gen_length=gen_length, block_length=block_length, steps=steps)
    assert torch.equal(result.sequences, expected)


@pytest.mark.parametrize("gen_length,block_length,steps", [(8, 8, 8), (12, 4, 6)])
def test_infilling_is_token_identical_to_llada_generate_with_the_suffix_appended(
    model, gen_length, block_length, steps
):
    prompts, suffix = torch.tensor([[5, 6, 7], [9, 10, 11]]), [30, 31, 32]
    expected = llada_generate(model, prompts, steps, gen_length, block_length, MASK, suffix)
    result = sample(
        model, prompts, gen_length=gen_length, block_length=block_length, steps=steps, suffix_ids=suffix, trace=True
    )
    assert torch.equal(result.sequences, expected)
    assert torch.equal(result.generated, expected[:, 3 : 3 + gen_length]) and result.suffix_length == 3
    assert all(frame.sequences[:, -3:].tolist() == [suffix] * 2 for frame in result.trace)
    without = llada_generate(model, prompts, steps, gen_length, block_length, MASK)
    assert not torch.equal(without[:, 3:], expected[:, 3 : 3 + gen_length])  # the model does read the suffix


def test_infilling_keeps_the_suffix_when_a_row_stops_and_masks_it_for_guidance():
    stopped = sample(
        StubModel(eos_for_prompt_seven),
        [[7, 8]],
        gen_length=8,
        block_length=4,
        steps=4,
        eos_token_id=EOS,
        eos_handling="stop",
        suffix_ids=[25, 26],
    )
    assert stopped.sequences.tolist() == [[7, 8] + [EOS] * 8 + [25, 26]]
    stub = StubModel(lambda ids: torch.zeros(*ids.shape, VOCAB))
    sample(stub, [[5, 6]], gen_length=4, steps=2, guidance_scale=1.0, suffix_ids=[25])
    conditional, unconditional = stub.calls[0].input_ids
    assert conditional.tolist() == [5, 6] + [MASK] * 4 + [25] and unconditional.tolist() == [MASK] * 7
