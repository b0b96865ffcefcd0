import itertools
import math

import pytest
import torch

from conftest import make_tiny_llama
from diff_trainer.diffusion.elbo import elbo_nll, elbo_terms
from diff_trainer.diffusion.masked_head import full_logits_ce_fn

VOCAB, MASK = 7, 6  # six real tokens and the mask id
INPUT_IDS = torch.tensor([[0, 3, 1, 4], [2, 5, 0, 1], [1, 2, 3, 4]])
MASKABLE = torch.tensor(
    [
        [False, True, True, True],  # prompt of one token, three to score
        [False, False, True, True],
        [False, False, False, False],  # nothing to score
    ]
)


@pytest.fixture(scope="module")
def logits_fn():
    model = make_tiny_llama(VOCAB, bidirectional=True, seed=3)

    @torch.no_grad()
    def fn(ids):
        return model(ids).logits

    return fn


def token_nll(logits_fn, ids, position, target):
    return -torch.log_softmax(logits_fn(ids.unsqueeze(0))[0, position].double(), -1)[target].item()


def exact_elbo(logits_fn, ids, maskable):
    """E_{l ~ U{1..L}} E_{subset of size l} [(L/l) Σ_masked CE] by enumeration, and the single-term variance."""
    positions = maskable.nonzero().flatten().tolist()
    length = len(positions)
    mean = second_moment = 0.0
    for count in range(1, length + 1):
        subsets = list(itertools.combinations(positions, count))
        for subset in subsets:
            noisy = ids.clone()
            noisy[list(subset)] = MASK
            term = length / count * sum(token_nll(logits_fn, noisy, p, ids[p]) for p in subset)
            probability = 1 / length / len(subsets)
            mean += probability * term
            second_moment += probability * term**2
    return mean, second_moment - mean**2


def random_order_nlls(logits_fn, ids, maskable):
    """−log p_σ(x) of the model decoded one token at a time in each order σ of the maskable positions."""
    positions = maskable.nonzero().flatten().tolist()
    nlls = []
    for order in itertools.permutations(positions):
        noisy = ids.clone()
        noisy[positions] = MASK
        nll = 0.0
        for position in order:
            nll += token_nll(logits_fn, noisy, position, ids[position])
            noisy[position] = ids[position]
        nlls.append(nll)
    return torch.tensor(nlls, dtype=torch.float64)


def test_monte_carlo_mean_matches_enumeration(logits_fn):
    num_samples = 3000
    estimate = elbo_nll(logits_fn, INPUT_IDS, MASKABLE, MASK, num_samples, generator=torch.Generator().manual_seed(0))
    assert estimate.shape == (3,)
    for row in range(2):
        mean, variance = exact_elbo(logits_fn, INPUT_IDS[row], MASKABLE[row])
        assert abs(estimate[row].item() - mean) < 5 * math.sqrt(variance / num_samples) + 1e-4, (row, mean)
    assert estimate[2].item() == 0.0


def test_elbo_is_random_order_nll_and_bounds_the_likelihood(logits_fn):
    """The ELBO is the mean NLL over decoding orders, so by Jensen it bounds −log E_σ p_σ(x) from above."""
    ids, maskable = INPUT_IDS[0], MASKABLE[0]
    elbo, _ = exact_elbo(logits_fn, ids, maskable)
    nlls = random_order_nlls(logits_fn, ids, maskable)
    assert elbo == pytest.approx(nlls.mean().item(), rel=1e-5)
    true_nll = -(torch.logsumexp(-nlls, 0) - math.log(len(nlls))).item()
    assert elbo >= true_nll


def test_elbo_terms_by_hand():
    fixed = torch.log(torch.tensor([[[0.5, 0.25, 0.25]] * 4] * 2))  # the same distribution at every position

    def logits_fn(noisy_ids):
        return fixed

    input_ids = torch.tensor([[0, 1, 2, 0], [2, 1, 0, 0]])
    maskable = torch.tensor([[False, True, True, True], [True, True, False, False]])
    masked = torch.tensor([[False, True, False, False], [True, True, False, False]])
    counts = masked.sum(1)
    terms = elbo_terms(full_logits_ce_fn(logits_fn), input_ids, maskable, input_ids, masked, counts)
    # row 0: L=3, l=1, CE(token 1) = log 4;  row 1: L=2, l=2, CE(2) + CE(1) = 2 log 4
    assert torch.allclose(terms, torch.tensor([-3 * math.log(4), -2 * math.log(4)]))


def test_elbo_terms_keep_gradients():
    logits = torch.zeros(1, 3, 4, requires_grad=True)
    masked = torch.tensor([[False, True, True]])
    terms = elbo_terms(
        full_logits_ce_fn(lambda ids: logits),
        torch.tensor([[0, 1, 2]]),
        masked,
        torch.tensor([[0, 3, 3]]),
        masked,
        masked.sum(1),
    )
    terms.sum().backward()
    assert terms.item() == pytest.approx(-2 * math.log(4)) and logits.grad[0, 1:].abs().sum() > 0


def test_shift_and_prompt_untouched(logits_fn):
    def checked_fn(ids):
        assert (ids[:, 0] != MASK).all()  # the prompt is never masked
        return logits_fn(ids)

    def shifted_fn(ids):  # an AR-adapted model: logits at i-1 predict token i
        logits = checked_fn(ids)
        return torch.cat([logits[:, 1:], torch.zeros_like(logits[:, :1])], dim=1)

    plain = elbo_nll(checked_fn, INPUT_IDS, MASKABLE, MASK, 16, generator=torch.Generator().manual_seed(1))
    shifted = elbo_nll(
        shifted_fn, INPUT_IDS, MASKABLE, MASK, 16, shift=True, generator=torch.Generator().manual_seed(1)
    )
    assert torch.allclose(plain, shifted)
    assert (plain[:2] > 0).all()
