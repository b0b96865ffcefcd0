"""SEDD samplers: step probabilities against rate-matrix definitions, and exact scores reproduce the data law."""

from types import SimpleNamespace

import pytest
import torch

from diff_trainer.diffusion.sedd import GeometricNoise, get_graph
from diff_trainer.sampling.sedd import SeddSamplerConfig, analytic_probs, denoise_probs, euler_probs, sedd_generate

N = 5
MASK = 4
PI = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)  # data law of every token (never MASK)


def rate_matrix(kind: str) -> torch.Tensor:
    """Q[y, z] = rate of y -> z."""
    if kind == "absorb":
        q = torch.zeros(N, N, dtype=torch.float64)
        q[:MASK, MASK], q[range(MASK), range(MASK)] = 1.0, -1.0
        return q
    return torch.full((N, N), 1.0 / N, dtype=torch.float64) - torch.eye(N, dtype=torch.float64)


def exact_log_score(kind):
    """log p_t(x with x_i := y)/p_t(x) for i.i.d. tokens of law PI: p_t = PI · exp(σ̄ Q) per position."""
    data = (
        torch.cat([PI, torch.zeros(N - len(PI), dtype=torch.float64)])
        if kind == "absorb"
        else torch.cat([PI[: N - 1] * 0.9, torch.tensor([0.1 * 1.0], dtype=torch.float64)])
    )

    def log_score_fn(x, sigma):
        levels, row_level = sigma.double().unique(return_inverse=True)  # rows share σ̄ within a step
        marginals = (data @ torch.linalg.matrix_exp(levels[:, None, None] * rate_matrix(kind)))[row_level]
        log_marginal = marginals.clamp_min(1e-300).log()  # [B, N]
        return log_marginal[:, None, :] - log_marginal.gather(1, x)[..., None]

    return log_score_fn, data


class TableModel(torch.nn.Module):
    """A 'network' returning the exact log-score (time-conditioned) or log PI (time-blind, for RADD)."""

    def __init__(self, kind, time_conditioned=True):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.log_score_fn, self.data = exact_log_score(kind)
        self.time_conditioned = time_conditioned

    def forward(self, input_ids, sigma=None, attention_mask=None, position_ids=None):
        if self.time_conditioned:
            return SimpleNamespace(logits=self.log_score_fn(input_ids, sigma))
        logits = torch.log(self.data.clamp_min(1e-30)).expand(*input_ids.shape, N).clone()
        return SimpleNamespace(logits=logits + 3.0)  # any offset: the softmax removes it


@pytest.mark.parametrize("kind", ["absorb", "uniform"])
def test_step_probabilities_match_definitions(kind):
    torch.manual_seed(0)
    graph = get_graph(kind, N, MASK)
    table = torch.randn(N, N, dtype=torch.float64)

    def log_score_fn(x, sigma):
        return table[x] * (1 + sigma[:, None, None])

    x = torch.tensor([[MASK, 1, 0], [2, MASK, 3]])
    t = torch.tensor([0.7, 0.4], dtype=torch.float64)
    noise, dt = GeometricNoise(1e-3, 8.0), 0.05
    q = rate_matrix(kind)
    euler = euler_probs(graph, noise, log_score_fn, x, t, dt)
    analytic = analytic_probs(graph, noise, log_score_fn, x, t, dt)
    final = denoise_probs(graph, noise, log_score_fn, x, t)
    for b in range(2):
        sigma, rate = noise(t[b : b + 1])
        dsigma = float(sigma - noise.total(t[b : b + 1] - dt))
        for i in range(3):
            xi = int(x[b, i])
            score = log_score_fn(x, sigma.expand(2))[b, i].exp()
            expected = dt * float(rate) * q[:, xi] * score  # Q̄(x, y) = Q[y, x] s_y
            expected[xi] = 1 - expected.sum() + expected[xi]
            assert torch.allclose(euler[b, i], expected, atol=1e-12)
            tweedie = (torch.linalg.matrix_exp(-dsigma * q.T) @ score) * torch.linalg.matrix_exp(dsigma * q)[:, xi]
            assert torch.allclose(analytic[b, i], tweedie, rtol=1e-9)
            last = torch.linalg.matrix_exp(-float(sigma) * q.T) @ score
            last = last * torch.linalg.matrix_exp(float(sigma) * q)[:, xi]
            if kind == "absorb":
                last[MASK] = 0
            assert torch.allclose(final[b, i], last, rtol=1e-9)


@pytest.mark.parametrize(
    "kind,predictor,time_conditioned",
    [
        ("absorb", "euler", True),
        ("absorb", "analytic", True),
        ("absorb", "analytic", False),
        ("uniform", "euler", True),
        ("uniform", "analytic", True),
    ],
)
def test_exact_score_samples_the_data_law(kind, predictor, time_conditioned):
    model = TableModel(kind, time_conditioned)
    config = SeddSamplerConfig(
        graph=kind,
        num_states=N,
        mask_token_id=MASK if kind == "absorb" else None,
        noise="loglinear",
        time_conditioned=time_conditioned,
        gen_length=4,
        steps=32,
        predictor=predictor,
    )
    prompts = [[1]] * 800
    result = sedd_generate(model, prompts, config, seed=0)
    assert (result.sequences[:, 0] == 1).all()  # the prompt is kept
    freq = torch.bincount(result.generated.reshape(-1), minlength=N).double() / result.generated.numel()
    assert torch.allclose(freq, model.data, atol=0.03), freq  # 3200 draws: 3.5 standard errors
    assert result.nfe == 33


def test_trace_and_reproducibility():
    model = TableModel("uniform")
    config = SeddSamplerConfig(graph="uniform", num_states=N, gen_length=6, steps=8)
    first = sedd_generate(model, [[], []], config, seed=3, trace=True)
    second = sedd_generate(model, [[], []], config, seed=3)
    assert torch.equal(first.sequences, second.sequences)
    assert len(first.trace) == 9
    previous = None
    for frame in first.trace:  # `committed` marks exactly the flips of that step
        if previous is not None:
            assert torch.equal(frame.committed, frame.sequences != previous)
        previous = frame.sequences
    assert torch.equal(first.trace[-1].sequences, first.sequences)


def test_config_from_checkpoint_settings():
    config = SeddSamplerConfig.from_diffusion_config(
        {"objective": "sedd_uniform", "noise": "geometric", "sigma_min": 1e-4, "sigma_max": 20.0}, 30, steps=5
    )
    assert (config.graph, config.noise, config.time_conditioned, config.steps) == ("uniform", "geometric", True, 5)
    masked = SeddSamplerConfig.from_diffusion_config({"objective": "masked_diffusion", "mask_token_id": 7}, 30)
    assert (masked.graph, masked.time_conditioned, masked.mask_token_id) == ("absorb", False, 7)
    with pytest.raises(ValueError, match="shifted"):
        SeddSamplerConfig.from_diffusion_config(
            {"objective": "masked_diffusion", "mask_token_id": 7, "shift_logits": True}, 30
        )
    with pytest.raises(ValueError, match="uniform graph needs a model that takes the noise level"):
        SeddSamplerConfig(graph="uniform", num_states=N, time_conditioned=False)
    with pytest.raises(ValueError, match="sedd sampler must be one of"):
        SeddSamplerConfig(graph="absorb", num_states=N, mask_token_id=MASK, predictor="ancestral")


def reference_infill(model, kind, predictor, prompts, suffix, gen_length, steps, noise, seed):
    """SEDD sampling written from the rate matrices: step probabilities by matrix exponentials (Tweedie) or the
    Euler rate, the same argmax(p / Exp(1)) draws, prefix and suffix put back after every step."""
    vocab = model.config.vocab_size
    q = torch.full((vocab, vocab), 1.0 / vocab, dtype=torch.float64) - torch.eye(vocab, dtype=torch.float64)
    if kind == "absorb":
        q = torch.zeros(vocab, vocab, dtype=torch.float64)
        q[:, vocab - 1] = 1.0
        q[range(vocab), range(vocab)] -= 1.0
    generator = torch.Generator().manual_seed(seed)
    rows = len(prompts)
    start = (
        torch.full((rows, gen_length), vocab - 1)
        if kind == "absorb"
        else torch.randint(0, vocab, (rows, gen_length), generator=generator)
    )
    fixed = torch.cat([torch.tensor(prompts), start, torch.tensor([suffix] * rows)], dim=1)
    free = torch.zeros_like(fixed, dtype=torch.bool)
    free[:, len(prompts[0]) : len(prompts[0]) + gen_length] = True
    x, dt = fixed.clone(), (1 - 1e-5) / steps
    times = torch.linspace(1, 1e-5, steps + 1, dtype=torch.float64)
    for step in range(steps + 1):
        t = times[step : step + 1]
        sigma, rate = noise(t)
        score = model(x, sigma=sigma.expand(rows)).logits.double().exp()
        probs = torch.empty(*x.shape, vocab, dtype=torch.float64)
        for b in range(rows):
            for i in range(x.shape[1]):
                xi = int(x[b, i])
                if step < steps and predictor == "euler":
                    probs[b, i] = float(dt * rate) * q[:, xi] * score[b, i]
                    probs[b, i, xi] = 1 - probs[b, i].sum() + probs[b, i, xi]
                    continue
                jump = float(sigma - noise.total(t - dt)) if step < steps else float(sigma)
                probs[b, i] = (torch.linalg.matrix_exp(-jump * q.T) @ score[b, i]) * torch.linalg.matrix_exp(jump * q)[
                    :, xi
                ]
                if step == steps and kind == "absorb":
                    probs[b, i, vocab - 1] = 0
        exponential = 1e-10 - torch.log(torch.rand(probs.shape, generator=generator).double() + 1e-10)
        x = torch.where(free, (probs / exponential).argmax(-1), fixed)
    return x


@pytest.mark.parametrize("kind,predictor", [("absorb", "analytic"), ("uniform", "euler"), ("uniform", "analytic")])
def test_prefix_and_suffix_conditioning_matches_the_reference(kind, predictor):
    """Infilling: the prefix and suffix never change in any step, and the draws equal the reference loop's."""
    from diff_trainer.models.ddit import DDiTConfig, DDiTModel
    from models.ddit_reference import randomise

    vocab = 9
    model = randomise(
        DDiTModel(
            DDiTConfig(
                vocab_size=vocab,
                hidden_size=32,
                cond_dim=16,
                num_hidden_layers=1,
                num_attention_heads=4,
                max_position_embeddings=32,
                dropout=0.0,
            )
        ),
        4,
    ).eval()
    prompts, suffix = [[1, 2], [3, 0]], [5, 6, 7]
    config = SeddSamplerConfig(
        graph=kind,
        num_states=vocab,
        mask_token_id=vocab - 1 if kind == "absorb" else None,
        noise="geometric",
        sigma_min=1e-3,
        sigma_max=6.0,
        gen_length=3,
        steps=4,
        predictor=predictor,
    )
    result = sedd_generate(model, prompts, config, suffix_ids=suffix, seed=11, trace=True)
    assert result.sequences.shape == (2, 8) and result.generated.shape == (2, 3)
    for frame in result.trace:
        assert frame.sequences[:, :2].tolist() == prompts and frame.sequences[:, 5:].tolist() == [suffix] * 2
        assert not frame.committed[:, :2].any() and not frame.committed[:, 5:].any()
    expected = reference_infill(model, kind, predictor, prompts, suffix, 3, 4, GeometricNoise(1e-3, 6.0), 11)
    assert torch.equal(result.sequences, expected)
    sigma = torch.tensor([0.5, 0.5])  # the scores of the generated span depend on the suffix: it conditions them
    assert not torch.allclose(
        model(result.sequences, sigma=sigma).logits[:, 2:5],
        model(result.sequences[:, :5], sigma=sigma).logits[:, 2:5],
        atol=1e-3,
    )
