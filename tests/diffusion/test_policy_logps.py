import pytest
import torch

from conftest import make_tiny_llama
from diff_trainer.data.preference import PreferenceCollator, noise_seed
from diff_trainer.diffusion.policy_logps import (
    LOGP_ESTIMATORS,
    coupled_masks,
    draw_masks,
    mask_generators,
    policy_logps,
    score_draw,
    token_logps,
)
from diff_trainer.diffusion.policy_losses import group_advantages, grpo_loss, k3_kl
from diff_trainer.objectives.masked import elbo_samples, model_logits

VOCAB, MASK, PAD = 12, 11, 0
# two groups of two rollouts: left-padded prompts, right-padded completions (equal lengths within a group)
INPUT_IDS = torch.tensor(
    [
        [PAD, 3, 4, 5, 6, 7, 8, PAD, PAD],
        [PAD, 3, 4, 5, 9, 2, 1, PAD, PAD],
        [PAD, PAD, 2, 6, 5, 5, 3, 4, 1],
        [PAD, PAD, 2, 6, 1, 2, 3, 9, 10],
    ]
)
PROMPT_MASK = torch.tensor([[0, 1, 1, 1, 0, 0, 0, 0, 0]] * 2 + [[0, 0, 1, 1, 0, 0, 0, 0, 0]] * 2).bool()
COMPLETION_MASK = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0, 0]] * 2 + [[0, 0, 0, 0, 1, 1, 1, 1, 1]] * 2).bool()
ATTENTION = (PROMPT_MASK | COMPLETION_MASK).long()
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0])
SETTINGS = {"one_step": {"p_mask_prompt": 0.5}, "coupled": {}, "elbo": {"num_samples": 3}}


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(VOCAB, bidirectional=True, seed=5)


def logits_fn_of(model, attention=ATTENTION, calls=None):
    """The model on B·k noisy rows (each row's attention repeated k times); `calls` records the inputs."""

    @torch.no_grad()
    def fn(noisy_ids):
        if calls is not None:
            calls.append(noisy_ids.clone())
        return model(
            input_ids=noisy_ids,
            attention_mask=attention.repeat_interleave(noisy_ids.shape[0] // attention.shape[0], dim=0),
        ).logits

    return fn


def score(estimator, logits_fns, generator, **overrides):
    settings = {**SETTINGS[estimator], **overrides}
    return policy_logps(estimator, logits_fns, INPUT_IDS, PROMPT_MASK, COMPLETION_MASK, MASK, generator, **settings)


def as_tokens(estimator, logps):
    """Per-token values and their mask; a sequence-level estimate is one 'token' per row."""
    if estimator == "elbo":
        return logps.unsqueeze(1), torch.ones(len(logps), 1, dtype=torch.bool)
    return logps, COMPLETION_MASK


def hand_logps(model, noisy_row, attention_row):
    """log_softmax of the model on one noisy row: [T, V] in float64."""
    with torch.no_grad():
        logits = model(input_ids=noisy_row.unsqueeze(0), attention_mask=attention_row.unsqueeze(0)).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)


@pytest.mark.parametrize("estimator", LOGP_ESTIMATORS)
def test_identical_policies_on_shared_masks_give_ratio_one_zero_kl_and_zero_grpo_loss(model, estimator):
    fn = logits_fn_of(model)
    current, old, ref = score(estimator, [fn, fn, fn], mask_generators(0, 7, 1, range(4)))
    logps, mask = as_tokens(estimator, current)
    ratio = torch.exp(logps - as_tokens(estimator, old)[0])
    assert torch.equal(ratio[mask], torch.ones(int(mask.sum())))
    assert torch.equal(k3_kl(logps, as_tokens(estimator, ref)[0])[mask], torch.zeros(int(mask.sum())))
    advantages = group_advantages(REWARDS, group_size=2)
    loss = grpo_loss(
        logps, as_tokens(estimator, old)[0], advantages, mask, beta=0.04, ref_logps=as_tokens(estimator, ref)[0]
    )
    assert loss.item() == 0.0
    assert (logps[mask] < 0).all() if estimator != "elbo" else (logps < 0).all()


@pytest.mark.parametrize("estimator", LOGP_ESTIMATORS)
def test_old_policy_scored_at_rollout_time_matches_current_policy_scored_later(model, estimator):
    fn = logits_fn_of(model)
    (old,) = score(estimator, [fn], mask_generators(3, 10, 0, range(4)))  # rollout time
    (current,) = score(estimator, [fn], mask_generators(3, 10, 0, range(4)))  # training step, same iteration
    (other_iteration,) = score(estimator, [fn], mask_generators(3, 10, 1, range(4)))
    assert torch.equal(current, old)
    assert not torch.equal(other_iteration, old)


@pytest.mark.parametrize("estimator", LOGP_ESTIMATORS)
def test_a_rows_masks_do_not_depend_on_its_batch(estimator):
    draw = draw_masks(
        estimator,
        INPUT_IDS,
        PROMPT_MASK,
        COMPLETION_MASK,
        MASK,
        mask_generators(1, 2, 0, range(4)),
        **SETTINGS[estimator],
    )
    halves = [
        draw_masks(
            estimator,
            INPUT_IDS[rows],
            PROMPT_MASK[rows],
            COMPLETION_MASK[rows],
            MASK,
            mask_generators(1, 2, 0, range(4)[rows]),
            **SETTINGS[estimator],
        )
        for rows in (slice(0, 2), slice(2, 4))
    ]
    assert torch.equal(draw.noisy_ids, torch.cat([half.noisy_ids for half in halves]))
    assert torch.equal(draw.masked, torch.cat([half.masked for half in halves]))


def test_one_step_values_are_the_models_log_softmax_at_the_masked_completion(model):
    calls = []
    (logps,) = score(
        "one_step", [logits_fn_of(model, calls=calls)], torch.Generator().manual_seed(0), p_mask_prompt=0.0
    )
    expected = torch.zeros(INPUT_IDS.shape, dtype=torch.float64)
    for row in range(len(INPUT_IDS)):
        noisy = torch.where(COMPLETION_MASK[row], MASK, INPUT_IDS[row])  # by hand: prompt clean, completion masked
        table = hand_logps(model, noisy, ATTENTION[row])
        for position in COMPLETION_MASK[row].nonzero().flatten().tolist():
            expected[row, position] = table[position, INPUT_IDS[row, position]]
    assert torch.equal(calls[0], torch.where(COMPLETION_MASK, MASK, INPUT_IDS))
    torch.testing.assert_close(logps.double(), expected, rtol=1e-5, atol=1e-6)


def test_one_step_masks_prompt_tokens_at_rate_p_mask_prompt_and_never_padding(model):
    calls = []
    generator = torch.Generator().manual_seed(1)
    (logps,) = score("one_step", [logits_fn_of(model, calls=calls)], generator, p_mask_prompt=0.3)
    noisy = calls[0]
    assert (noisy[COMPLETION_MASK] == MASK).all()
    padding = ~(PROMPT_MASK | COMPLETION_MASK)
    assert torch.equal(noisy[padding], INPUT_IDS[padding])
    for row in range(len(INPUT_IDS)):  # the values are the model's on the input it was given
        table = hand_logps(model, noisy[row], ATTENTION[row])
        for position in COMPLETION_MASK[row].nonzero().flatten().tolist():
            assert logps[row, position].item() == pytest.approx(
                table[position, INPUT_IDS[row, position]].item(), abs=1e-5
            )
    prompts = PROMPT_MASK.repeat(500, 1)
    draw = draw_masks(
        "one_step",
        INPUT_IDS.repeat(500, 1),
        prompts,
        COMPLETION_MASK.repeat(500, 1),
        MASK,
        torch.Generator().manual_seed(2),
        p_mask_prompt=0.3,
    )
    rate = (draw.noisy_ids[prompts] == MASK).float().mean().item()
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / prompts.sum().item()) ** 0.5


def test_coupled_scores_every_completion_token_in_exactly_one_of_its_two_passes(model):
    for seed in range(5):
        calls = []
        score("coupled", [logits_fn_of(model, calls=calls)], mask_generators(seed, 0, 0, range(4)))
        passes = calls[0].reshape(len(INPUT_IDS), 3, -1)
        masked = passes == MASK
        assert torch.equal(masked[:, 0], COMPLETION_MASK)  # the fully masked pass
        assert not (masked[:, 1] & masked[:, 2]).any()
        assert torch.equal(masked[:, 1] | masked[:, 2], COMPLETION_MASK)
        first, second, times = coupled_masks(COMPLETION_MASK, mask_generators(seed, 0, 0, range(4)))
        assert torch.equal(first, masked[:, 1]) and torch.equal(second, masked[:, 2])
        assert ((times >= 0.2) & (times <= 0.8)).all()


def test_coupled_never_masks_prompt_tokens(model):
    for seed in range(5):
        calls = []
        score("coupled", [logits_fn_of(model, calls=calls)], torch.Generator().manual_seed(seed))
        clean = ~COMPLETION_MASK.repeat_interleave(3, dim=0)
        assert torch.equal(calls[0][clean], INPUT_IDS.repeat_interleave(3, dim=0)[clean])


def test_coupled_values_weight_the_pair_by_one_over_t_and_one_over_one_minus_t(model):
    calls = []
    (logps,) = score("coupled", [logits_fn_of(model, calls=calls)], mask_generators(4, 0, 0, range(4)))
    first, _, times = coupled_masks(COMPLETION_MASK, mask_generators(4, 0, 0, range(4)))
    passes = calls[0].reshape(len(INPUT_IDS), 3, -1)
    for row in range(len(INPUT_IDS)):
        tables = [hand_logps(model, passes[row, j], ATTENTION[row]) for j in range(3)]
        t = times[row].item()
        for position in COMPLETION_MASK[row].nonzero().flatten().tolist():
            token = INPUT_IDS[row, position]
            pair = tables[1][position, token] / t if first[row, position] else tables[2][position, token] / (1 - t)
            expected = (tables[0][position, token] + pair) / 2  # DiffuCoder: (p0 + weighted pair) / 2
            assert logps[row, position].item() == pytest.approx(expected.item(), abs=1e-5)
    assert (logps[~COMPLETION_MASK] == 0).all()


@pytest.mark.parametrize("num_samples", [1, 4])
def test_elbo_equals_the_vrpo_scores_of_the_preference_collator_on_the_same_masks(model, num_samples):
    features = [
        {"prompt_ids": [3, 4, 5], "chosen_ids": [6, 7, 8, 1], "rejected_ids": [9, 2, 1], "mask_seed": 11},
        {"prompt_ids": [2, 6], "chosen_ids": [5, 3, 4, 1], "rejected_ids": [1, 2, 3, 9, 1], "mask_seed": 12},
    ]
    batch = PreferenceCollator(MASK, PAD, num_samples=num_samples)(features)
    vrpo = elbo_samples(model_logits(model, batch["attention_mask"], num_samples), batch, num_samples).mean(dim=1)
    # the collator draws a pair's chosen masks, then its rejected ones, from the pair's generator
    pair_generators = [torch.Generator().manual_seed(noise_seed(f["mask_seed"], 0, 0)) for f in features]
    completion = batch["maskable"]
    prompt = batch["attention_mask"].bool() & ~completion
    draw = draw_masks(
        "elbo", batch["input_ids"], prompt, completion, MASK, pair_generators * 2, num_samples=num_samples
    )
    assert torch.equal(draw.noisy_ids, batch["noisy_ids"]) and torch.equal(draw.masked, batch["masked"])
    ours = score_draw("elbo", logits_fn_of(model, batch["attention_mask"]), batch["input_ids"], completion, draw)
    assert torch.equal(ours, vrpo)


def test_shifted_models_score_token_k_with_the_logits_at_k_minus_one(model):
    calls = []
    draw = draw_masks("one_step", INPUT_IDS, PROMPT_MASK, COMPLETION_MASK, MASK, torch.Generator().manual_seed(0))
    logps = token_logps(logits_fn_of(model, calls=calls), INPUT_IDS, draw, shift=True)
    row, position = 2, 6
    table = hand_logps(model, calls[0][row], ATTENTION[row])
    assert logps[row, position].item() == pytest.approx(table[position - 1, INPUT_IDS[row, position]].item(), abs=1e-5)


def test_bad_estimator_or_generator_count_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown log-probability estimator 'exact'; valid: one_step, coupled, elbo"):
        draw_masks("exact", INPUT_IDS, PROMPT_MASK, COMPLETION_MASK, MASK)
    with pytest.raises(ValueError, match="3 generators for 4 rows"):
        draw_masks("coupled", INPUT_IDS, PROMPT_MASK, COMPLETION_MASK, MASK, mask_generators(0, 0, 0, range(3)))
