"""Score-entropy discrete diffusion (SEDD, Lou, Meng & Ermon 2024): noise, graphs, score entropy, DWDSE bound.

A SEDD model outputs a log-score s[b, i, y] ≈ log p_t(x with x_i := y) / p_t(x) for every position and every state
y. Two forward processes ("graphs") are supported:

- absorbing: each token jumps to the MASK state with probability 1 − e^(−σ̄(t)); the MASK id may be any row;
- uniform: each token is resampled uniformly over all N states with probability 1 − e^(−σ̄(t)).

The DWDSE loss σ̄'(t) · Σ_i ℓ_i is an upper bound on −log p(x0) (SEDD eq. 12/17). Every random function takes an
optional `torch.Generator`; σ̄ and σ̄' are per row (Tensor[B]).
"""

import math

import torch

from .forward import _uniform, mask_tokens, sample_times

SEDD_NOISES = ("loglinear", "geometric")
SEDD_GRAPHS = ("absorb", "uniform")
TIME_EPS = 1e-3  # training times t = (1 − ε)u + ε
SAMPLING_EPS = 1e-5  # the sampler's last time


# ----------------------------------------------------------------------------------------------------
# Noise: σ̄(t) and its rate σ̄'(t)


class LogLinearNoise:
    """σ̄(t) = −log(1 − (1−ε)t): the mask probability 1 − e^(−σ̄) is linear in t (SEDD's loglinear)."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * t)

    def __call__(self, t):
        """(σ̄(t), σ̄'(t))."""
        return self.total(t), self.rate(t)


class GeometricNoise:
    """σ̄(t) = σ_min^(1−t) σ_max^t, σ̄'(t) = σ̄(t) · ln(σ_max/σ_min) (SEDD's geometric)."""

    name = "geometric"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"geometric noise needs 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}.")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        return self.total(t) * math.log(self.sigma_max / self.sigma_min)

    def __call__(self, t):
        """(σ̄(t), σ̄'(t))."""
        return self.total(t), self.rate(t)


def get_sedd_noise(name: str, sigma_min: float = 1e-4, sigma_max: float = 20.0, eps: float = 1e-3):
    """The noise called `name` ("loglinear" or "geometric")."""
    if name == "loglinear":
        return LogLinearNoise(eps)
    if name == "geometric":
        return GeometricNoise(sigma_min, sigma_max)
    raise ValueError(f"unknown SEDD noise {name!r}; valid: {', '.join(SEDD_NOISES)}")


def sample_sedd_times(
    batch_size: int, *, antithetic: bool = True, eps: float = TIME_EPS, generator=None, device=None
) -> torch.Tensor:
    """Training times t = (1 − ε)u + ε with u ~ U[0, 1) (stratified over the batch when antithetic)."""
    u = sample_times(batch_size, antithetic=antithetic, generator=generator, device=device)
    return (1 - eps) * u + eps


def sample_categorical(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One draw per row of unnormalised, non-negative `probs` [..., N]: argmax(p / Exp(1))."""
    uniform = _uniform(probs.shape, generator, probs.device).double()
    exponential = 1e-10 - torch.log(uniform + 1e-10)
    return (probs.double() / exponential).argmax(dim=-1)


def _column(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """values[b, i, ids[b, i]]."""
    return values.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row Tensor[B] shaped to broadcast against `like` [B, L, ...]."""
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1)))


def _with_diagonal(rate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A rate matrix's column at x: the off-diagonal rates, and −(their sum) on x itself (rows sum to 0)."""
    return rate.scatter(-1, x.unsqueeze(-1), -rate.sum(-1, keepdim=True))


# ----------------------------------------------------------------------------------------------------
# Graphs


class AbsorbingGraph:
    """Absorbing forward process over `num_states` states, one of which (`mask_token_id`) is MASK."""

    kind = "absorb"

    def __init__(self, num_states: int, mask_token_id: int):
        if not 0 <= mask_token_id < num_states:
            raise ValueError(f"mask_token_id {mask_token_id} is not one of the {num_states} states.")
        self.num_states, self.mask_token_id = num_states, mask_token_id

    def corrupt(self, x0, sigma, maskable, generator=None):
        """x_t: each maskable token becomes MASK with probability 1 − e^(−σ̄) of its row."""
        noisy, _ = mask_tokens(x0, maskable, -torch.expm1(-sigma), self.mask_token_id, generator)
        return noisy

    def limit(self, shape, device=None) -> torch.Tensor:
        """The t = 1 state: all MASK."""
        return torch.full(shape, self.mask_token_id, dtype=torch.long, device=device)

    def score_entropy(self, log_score, sigma, x_t, x0) -> torch.Tensor:
        """ℓ_i (SEDD eq. 5, absorbing): Σ_(y≠M) e^(s_y) − r·s_(x0) + r(log r − 1), r = 1/(e^σ̄ − 1); 0 if unmasked."""
        rows, cols = (x_t == self.mask_token_id).nonzero(as_tuple=True)
        scores = log_score[rows, cols].float()  # only masked positions: the others may overflow exp and add 0
        ratio = 1 / torch.expm1(sigma.float())[rows]
        positive = scores.exp().sum(-1) - scores[:, self.mask_token_id].exp()
        negative = ratio * scores.gather(-1, x0[rows, cols].unsqueeze(-1)).squeeze(-1)
        entropy = torch.zeros(x_t.shape, dtype=torch.float32, device=log_score.device)
        entropy[rows, cols] = positive - negative + ratio * (ratio.log() - 1)
        return entropy

    def staggered_score(self, score, dsigma) -> torch.Tensor:
        """Tweedie's staggered score (SEDD eq. 19): s·e^Δσ, and MASK gets + (1 − e^Δσ)·Σ_y s_y."""
        growth = _per_row(dsigma.to(score.dtype), score).exp()
        staggered = score * growth
        staggered[..., self.mask_token_id] += ((1 - growth) * score.sum(-1, keepdim=True)).squeeze(-1)
        return staggered

    def transp_transition(self, x, sigma) -> torch.Tensor:
        """Column x of exp(σ̄ Q) for every position: e^(−σ̄) on x itself, + (1 − e^(−σ̄)) everywhere if x = MASK."""
        keep = _per_row(torch.exp(-sigma.double()), x.unsqueeze(-1))
        column = keep * torch.nn.functional.one_hot(x, self.num_states).double()
        return column + torch.where(x == self.mask_token_id, 1 - keep.squeeze(-1), 0.0).unsqueeze(-1)

    def reverse_rate(self, x, score) -> torch.Tensor:
        """Reverse rates Q̄(x, y) = Q(y, x)·s_y (SEDD eq. 3): s_y at a MASK position for y ≠ MASK, 0 elsewhere."""
        rate = torch.where((x == self.mask_token_id).unsqueeze(-1), score, 0.0)
        rate[..., self.mask_token_id] = 0.0
        return _with_diagonal(rate, x)


class UniformGraph:
    """Uniform forward process: a token is resampled uniformly over all `num_states` states."""

    kind = "uniform"

    def __init__(self, num_states: int):
        self.num_states = num_states

    def corrupt(self, x0, sigma, maskable, generator=None):
        """x_t: each maskable token is resampled uniformly with probability 1 − e^(−σ̄) of its row."""
        move = maskable & (_uniform(x0.shape, generator, x0.device) < -torch.expm1(-sigma).unsqueeze(1))
        draw_device = generator.device if generator is not None else x0.device
        states = torch.randint(0, self.num_states, x0.shape, generator=generator, device=draw_device)
        return torch.where(move, states.to(x0.device), x0)

    def limit(self, shape, device=None, generator=None) -> torch.Tensor:
        """The t = 1 state: uniform noise."""
        draw_device = generator.device if generator is not None else device
        return torch.randint(0, self.num_states, shape, generator=generator, device=draw_device).to(device)

    def score_entropy(self, log_score, sigma, x_t, x0) -> torch.Tensor:
        """ℓ_i for the uniform graph (SEDD eq. 5 summed in closed form; DESIGN.md §3b)."""
        n = self.num_states
        log_score = log_score.float()
        jump = _per_row(torch.expm1(sigma.float()), x_t)
        ratio = 1 - n / (jump + n)  # ρ: the ratio p_t(y)/p_t(x0) for y ≠ x0
        unchanged = x_t == x0
        negative = log_score.mean(-1) - _column(log_score, x_t) / n
        negative = torch.where(unchanged, ratio * negative, _column(log_score, x0) / jump + negative)
        constant = torch.where(
            unchanged, (n - 1) / n * ratio * (ratio.log() - 1), ((-ratio.log() - 1) / ratio - (n - 2)) / n
        )
        score = log_score.exp()
        positive = score.mean(-1) - _column(score, x_t) / n
        return positive - negative + constant

    def staggered_score(self, score, dsigma) -> torch.Tensor:
        """Tweedie's staggered score for the uniform graph: s·e^Δσ + (e^(−Δσ) − 1)/(N e^(−Δσ))·Σ_y s_y."""
        shrink = _per_row(torch.exp(-dsigma.to(score.dtype)), score)
        return (shrink - 1) / (self.num_states * shrink) * score.sum(-1, keepdim=True) + score / shrink

    def transp_transition(self, x, sigma) -> torch.Tensor:
        """Column x of exp(σ̄ Q): (1 − e^(−σ̄))/N off x, and the rest of the mass on x."""
        move = _per_row(-torch.expm1(-sigma.double()), x.unsqueeze(-1)) / self.num_states
        column = move.expand(*x.shape, self.num_states).clone()
        stay = (1 - move * (self.num_states - 1)).expand(*x.shape, 1)
        return column.scatter(-1, x.unsqueeze(-1), stay)

    def reverse_rate(self, x, score) -> torch.Tensor:
        """Reverse rates Q̄(x, y) = Q(y, x)·s_y = s_y / N for y ≠ x (SEDD eq. 3)."""
        return _with_diagonal((score / self.num_states).scatter(-1, x.unsqueeze(-1), 0.0), x)


def get_graph(kind: str, num_states: int, mask_token_id=None):
    """The graph called `kind` ("absorb" needs the MASK id)."""
    if kind == "absorb":
        if mask_token_id is None:
            raise ValueError("the absorbing graph needs a mask_token_id.")
        return AbsorbingGraph(num_states, mask_token_id)
    if kind == "uniform":
        return UniformGraph(num_states)
    raise ValueError(f"unknown SEDD graph {kind!r}; valid: {', '.join(SEDD_GRAPHS)}")


# ----------------------------------------------------------------------------------------------------
# From network outputs to log-scores


def scale_log_score_by_sigma(output, sigma) -> torch.Tensor:
    """SEDD's `scale_by_sigma` (absorbing): s = out − log(e^σ̄ − 1) − log(N − 1)."""
    shift = torch.log(torch.expm1(sigma.float())).to(output.dtype)
    return output - _per_row(shift, output) - math.log(output.shape[-1] - 1)


def zero_input_entry(log_score, input_ids) -> torch.Tensor:
    """Set s[b, i, x_i] = 0: the ratio of a state to itself is 1."""
    return log_score.scatter(-1, input_ids.unsqueeze(-1), 0.0)


def radd_log_score(logits, sigma, mask_token_id: int) -> torch.Tensor:
    """RADD (Ou et al. 2024, eq. 6): a masked-diffusion denoiser as an absorbing log-score.

    log s_y = log_softmax(logits without MASK)_y − log(e^σ̄ − 1); the MASK column is 0 (its input entry).
    """
    logits = logits.float().clone()
    logits[..., mask_token_id] = float("-inf")
    log_score = torch.log_softmax(logits, dim=-1) - _per_row(torch.log(torch.expm1(sigma.float())), logits)
    log_score[..., mask_token_id] = 0.0
    return log_score


# ----------------------------------------------------------------------------------------------------
# Loss and likelihood


def score_entropy_terms(graph, log_score, sigma, x_t, x0, maskable) -> torch.Tensor:
    """ℓ_i at the trainable positions, 0 elsewhere: Tensor[B, L] float32."""
    return torch.where(maskable, graph.score_entropy(log_score, sigma, x_t, x0), 0.0)


def dwdse_terms(score_fn, graph, noise, x0, maskable, times, generator=None, chunk_size=None) -> torch.Tensor:
    """One DWDSE sample per row (SEDD eq. 17): σ̄'(t) · Σ_(trainable i) ℓ_i, in nats (an upper bound on −log p).

    `score_fn(x_t, sigma)` returns log-scores [B, L, N], called on `chunk_size` rows at a time (default: all); every
    row is noised first, so the result does not depend on the chunk size.
    """
    sigma, rate = noise(times)
    x_t = graph.corrupt(x0, sigma, maskable, generator)
    size = chunk_size or len(x0)
    terms = torch.cat(
        [
            score_entropy_terms(graph, score_fn(noisy, level), level, noisy, clean, trainable)
            for noisy, level, clean, trainable in zip(
                x_t.split(size), sigma.split(size), x0.split(size), maskable.split(size)
            )
        ]
    )
    return rate.float() * terms.sum(dim=1)


@torch.no_grad()
def dwdse_nll(
    score_fn, graph, noise, x0, maskable, num_samples: int, *, eps: float = TIME_EPS, generator=None, chunk_size=None
) -> torch.Tensor:
    """Upper bound on −log p(x_trainable | rest) per row (nats), averaged over `num_samples` Monte-Carlo times.

    The times of the samples are stratified (shared by all rows); `score_fn(x_t, sigma)` gets the B·num_samples
    rows with the copies of a row together (row k·n + j is sample j of row k), `chunk_size` rows at a time.
    """
    batch_size = x0.shape[0]
    offsets = sample_times(num_samples, antithetic=True, generator=generator, device=x0.device)
    times = ((1 - eps) * offsets + eps).repeat(batch_size)  # t = (1 − ε)u + ε
    copies = x0.repeat_interleave(num_samples, dim=0)
    terms = dwdse_terms(
        score_fn, graph, noise, copies, maskable.repeat_interleave(num_samples, dim=0), times, generator, chunk_size
    )
    return terms.reshape(batch_size, num_samples).mean(dim=1)
