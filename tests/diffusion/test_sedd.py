"""SEDD maths against independent re-implementations written from the definitions (rate matrices, matrix_exp)."""

import math

import pytest
import torch

from diff_trainer.diffusion.losses import masked_token_losses
from diff_trainer.diffusion.sedd import (
    AbsorbingGraph,
    GeometricNoise,
    LogLinearNoise,
    UniformGraph,
    dwdse_nll,
    get_graph,
    get_sedd_noise,
    radd_log_score,
    sample_categorical,
    sample_sedd_times,
    scale_log_score_by_sigma,
    zero_input_entry,
)

N = 6
MASK = 2  # deliberately not the last id


def rate_matrix(kind: str) -> torch.Tensor:
    """Q[y, z] = rate of the jump y -> z (rows sum to 0), float64."""
    if kind == "absorb":
        q = torch.zeros(N, N, dtype=torch.float64)
        for y in range(N):
            if y != MASK:
                q[y, MASK], q[y, y] = 1.0, -1.0
        return q
    return torch.full((N, N), 1.0 / N, dtype=torch.float64) - torch.eye(N, dtype=torch.float64)


def reference_score_entropy(kind, log_score, sigma, x_t, x0):
    """ℓ(x_t) = Σ_(y≠x_t) Q[y, x_t] (e^(s_y) − a_y s_y + a_y(log a_y − 1)), a_y = p_t(y|x0)/p_t(x_t|x0)."""
    q = rate_matrix(kind)
    out = torch.zeros(x_t.shape, dtype=torch.float64)
    for b in range(x_t.shape[0]):
        transition = torch.linalg.matrix_exp(float(sigma[b]) * q)  # transition[x0, y] = p_t(y | x0)
        for i in range(x_t.shape[1]):
            xt, clean = int(x_t[b, i]), int(x0[b, i])
            total = 0.0
            for y in range(N):
                if y == xt or q[y, xt] == 0:
                    continue
                a = transition[clean, y] / transition[clean, xt]
                s = float(log_score[b, i, y])
                constant = a * (math.log(a) - 1) if a > 0 else 0.0
                total += q[y, xt] * (math.exp(s) - a * s + constant)
            out[b, i] = total
    return out


@pytest.fixture
def scores():
    torch.manual_seed(0)
    sigma = torch.tensor([0.05, 0.7, 3.0])
    log_score = torch.randn(3, 5, N, dtype=torch.float64)
    x0 = torch.randint(0, N, (3, 5))
    x0[x0 == MASK] = 0
    return sigma, log_score, x0


def test_noise_values():
    t = torch.tensor([0.001, 0.5, 1.0], dtype=torch.float64)
    loglinear = LogLinearNoise(1e-3)
    sigma, rate = loglinear(t)
    assert torch.allclose(sigma, -torch.log(1 - 0.999 * t))
    assert torch.allclose(rate, 0.999 / (1 - 0.999 * t))
    # σ̄'/(e^σ̄ − 1) = 1/t: LLaDA's weight
    assert torch.allclose(rate / torch.expm1(sigma), 1 / t)
    geometric = GeometricNoise(1e-4, 20.0)
    sigma, rate = geometric(t)
    assert torch.allclose(
        sigma, torch.tensor([1e-4**0.999 * 20**0.001, math.sqrt(1e-4 * 20), 20.0], dtype=torch.float64)
    )
    h = 1e-6  # σ̄' is the derivative of σ̄
    assert torch.allclose(rate, (geometric.total(t + h) - geometric.total(t - h)) / (2 * h), rtol=1e-6)
    assert torch.allclose(loglinear.rate(t), (loglinear.total(t + h) - loglinear.total(t - h)) / (2 * h), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown SEDD noise"):
        get_sedd_noise("cosine")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        GeometricNoise(1.0, 0.5)


def test_sedd_times_stratified():
    t = sample_sedd_times(4, generator=torch.Generator().manual_seed(3))
    u = (t - 1e-3) / (1 - 1e-3)
    gaps = torch.sort(u).values.diff()
    assert torch.allclose(gaps, torch.full((3,), 0.25), atol=1e-6)


@pytest.mark.parametrize("kind", ["absorb", "uniform"])
def test_score_entropy_matches_definition(kind, scores):
    sigma, log_score, x0 = scores
    graph = get_graph(kind, N, MASK)
    x_t = graph.corrupt(x0, sigma, torch.ones_like(x0, dtype=torch.bool), torch.Generator().manual_seed(1))
    ours = graph.score_entropy(log_score, sigma, x_t, x0).double()
    reference = reference_score_entropy(kind, log_score, sigma, x_t, x0)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)
    if kind == "uniform":  # both branches (x_t = x0 and x_t ≠ x0) are exercised
        assert (x_t == x0).any() and (x_t != x0).any()
    else:
        assert (x_t == MASK).any() and (x_t != MASK).any()


def test_score_entropy_is_minimal_at_true_ratio():
    """Score entropy is ≥ 0 and 0 exactly at the true ratios p_t(y|x0)/p_t(x_t|x0) (SEDD Prop. 3.2)."""
    sigma = torch.tensor([0.9])
    x0 = torch.tensor([[4]])
    x_t = torch.tensor([[1]])  # a uniform jump away from x0
    transition = torch.linalg.matrix_exp(0.9 * rate_matrix("uniform"))
    true_log_ratio = (transition[4] / transition[4, 1]).log().reshape(1, 1, N)
    graph = UniformGraph(N)
    assert float(graph.score_entropy(true_log_ratio, sigma, x_t, x0)) == pytest.approx(0.0, abs=1e-6)
    assert float(graph.score_entropy(true_log_ratio + 0.3, sigma, x_t, x0)) > 1e-3


def test_forward_processes():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.zeros(2, 20000, dtype=torch.long) + 1
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, :10] = False
    sigma = torch.tensor([0.2, 2.0])
    absorbed = AbsorbingGraph(N, MASK).corrupt(x0, sigma, maskable, generator)
    assert set(absorbed.unique().tolist()) == {1, MASK}
    assert (absorbed[:, :10] == 1).all()
    share = (absorbed == MASK).float().mean(1)
    assert torch.allclose(share, 1 - torch.exp(-sigma), atol=0.015)
    resampled = UniformGraph(N).corrupt(x0, sigma, maskable, generator)
    assert (resampled[:, :10] == 1).all()
    changed = (resampled != 1).float().mean(1)  # a resample lands on the same id with prob 1/N
    assert torch.allclose(changed, (1 - torch.exp(-sigma)) * (N - 1) / N, atol=0.015)


@pytest.mark.parametrize("kind", ["absorb", "uniform"])
def test_staggered_score_and_transition(kind, scores):
    """staggered = exp(−Δσ Qᵀ) s and transp_transition = column x of exp(σ Q), from matrix_exp."""
    sigma, log_score, x0 = scores
    graph = get_graph(kind, N, MASK)
    q = rate_matrix(kind)
    score = log_score.exp()
    staggered = graph.staggered_score(score, sigma.double())
    columns = graph.transp_transition(x0, sigma)
    for b in range(3):
        back = torch.linalg.matrix_exp(-float(sigma[b]) * q.T)
        forward = torch.linalg.matrix_exp(float(sigma[b]) * q)
        for i in range(5):
            assert torch.allclose(staggered[b, i], back @ score[b, i], rtol=1e-5, atol=1e-8)
            assert torch.allclose(columns[b, i], forward[:, x0[b, i]], rtol=1e-6, atol=1e-10)
    masked = torch.full_like(x0, MASK)
    if kind == "absorb":
        assert torch.allclose(
            graph.transp_transition(masked, sigma)[0, 0], torch.linalg.matrix_exp(float(sigma[0]) * q)[:, MASK]
        )


@pytest.mark.parametrize("kind", ["absorb", "uniform"])
def test_reverse_rate(kind, scores):
    """Q̄(x, y) = Q[y, x]·s_y off the diagonal, and each row of rates sums to 0."""
    _, log_score, x0 = scores
    graph = get_graph(kind, N, MASK)
    x = x0.clone()
    x[0, :3] = MASK
    score = log_score.exp()
    rate = graph.reverse_rate(x, score)
    q = rate_matrix(kind)
    for b in range(3):
        for i in range(5):
            expected = q[:, x[b, i]] * score[b, i]
            expected[x[b, i]] = 0
            expected[x[b, i]] = -expected.sum()
            assert torch.allclose(rate[b, i], expected)


def test_radd_identity():
    """A masked-diffusion denoiser p gives s = p/(e^σ̄ − 1), and its score entropy is (1/t)·CE for loglinear."""
    torch.manual_seed(0)
    logits = torch.randn(3, 7, N)
    x0 = torch.randint(0, N, (3, 7))
    x0[x0 == MASK] = 0
    t = torch.tensor([0.1, 0.5, 0.9])
    noise = LogLinearNoise()
    sigma, rate = noise(t)
    graph = AbsorbingGraph(N, MASK)
    maskable = torch.ones_like(x0, dtype=torch.bool)
    x_t = graph.corrupt(x0, sigma, maskable, torch.Generator().manual_seed(0))
    log_score = radd_log_score(logits, sigma, MASK)
    masked_logits = logits.clone()
    masked_logits[..., MASK] = float("-inf")
    p = masked_logits.softmax(-1)
    expected = torch.where(torch.arange(N) == MASK, 1.0, p / torch.expm1(sigma)[:, None, None])
    assert torch.allclose(log_score.exp(), expected, rtol=1e-5)
    dwdse = rate * graph.score_entropy(log_score, sigma, x_t, x0).sum(1)
    cross_entropy = masked_token_losses(masked_logits, x0, x_t == MASK).sum(1)
    assert torch.allclose(dwdse, cross_entropy / t, rtol=1e-5)


def test_output_transforms():
    output = torch.randn(2, 3, N)
    sigma = torch.tensor([0.01, 2.0])
    scaled = scale_log_score_by_sigma(output, sigma)
    assert torch.allclose(scaled[1], output[1] - math.log(math.exp(2.0) - 1) - math.log(N - 1))
    ids = torch.tensor([[0, 5, 2], [1, 1, 3]])
    zeroed = zero_input_entry(output, ids)
    assert zeroed[0, 1, 5] == 0 and zeroed[1, 2, 3] == 0 and zeroed[0, 1, 4] == output[0, 1, 4]


def test_sample_categorical_frequencies():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3]).repeat(40000, 1) * 7  # unnormalised
    draws = sample_categorical(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.01)


def test_dwdse_nll_mean_of_terms_and_ignores_prompt():
    """The MC bound is the mean of its per-sample terms; prompt positions never enter."""
    torch.manual_seed(0)
    table = torch.randn(N, N)

    def score_fn(x_t, sigma):
        return table[x_t] - 0.1 * sigma[:, None, None]

    graph, noise = UniformGraph(N), GeometricNoise(1e-3, 5.0)
    x0 = torch.randint(0, N, (2, 9))
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, :4] = False
    bound = dwdse_nll(score_fn, graph, noise, x0, maskable, 4, generator=torch.Generator().manual_seed(5))
    # the same draws in the same order: stratified times t_j, copies of a row together
    generator = torch.Generator().manual_seed(5)
    u = torch.rand((), generator=generator)
    times = ((1 - 1e-3) * ((u + torch.arange(4) / 4) % 1.0) + 1e-3).repeat(2)
    ids, mask = x0.repeat_interleave(4, 0), maskable.repeat_interleave(4, 0)
    sigma, rate = noise(times)
    x_t = graph.corrupt(ids, sigma, mask, generator)
    terms = rate * (graph.score_entropy(score_fn(x_t, sigma), sigma, x_t, ids) * mask).sum(1)
    assert torch.allclose(bound, terms.reshape(2, 4).mean(1))
    assert (bound > 0).all()
    prompt_changed = x0.clone()
    prompt_changed[:, :4] = (x0[:, :4] + 1) % N  # changes the ids of non-trainable positions only

    def input_blind(x_t, sigma):
        return torch.zeros(*x_t.shape, N)

    a = dwdse_nll(input_blind, graph, noise, x0, maskable, 4, generator=torch.Generator().manual_seed(5))
    b = dwdse_nll(input_blind, graph, noise, prompt_changed, maskable, 4, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, b)


def test_graph_errors():
    with pytest.raises(ValueError, match="needs a mask_token_id"):
        get_graph("absorb", N)
    with pytest.raises(ValueError, match="not one of the 6 states"):
        AbsorbingGraph(N, 6)
    with pytest.raises(ValueError, match="unknown SEDD graph"):
        get_graph("gaussian", N)
