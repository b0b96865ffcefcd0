"""SEDD samplers (Lou, Meng & Ermon 2024): reverse-time τ-leaping with the Euler or the analytic (Tweedie) step.

The sequence starts at the graph's t = 1 state (all MASK, or uniform noise) after the prompt and is moved along
`steps` times from t = 1 to t = 1e-5; every step may change any generated position (a uniform-graph token can flip
back and forth). A final denoising step at σ̄(1e-5) removes what noise is left. The prompt (prefix) and an optional
suffix after the generated span are re-imposed after every step, so they condition the sample (infilling).

Works with a time-conditioned model (`model(input_ids, sigma=σ̄)` returns log-scores: DDiT, TimeConditionedLM) and,
for the absorbing graph, with a time-blind masked-diffusion model through the RADD identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..diffusion.sedd import (
    SAMPLING_EPS,
    get_graph,
    get_sedd_noise,
    radd_log_score,
    sample_categorical,
    zero_input_entry,
)
from ..diffusion_config import MASKED, SEDD_ABSORB, SEDD_UNIFORM
from .masked import GenerationResult, StepFrame, context_length, left_pad, suffix_rows

# a masked-diffusion checkpoint is read as a time-blind absorbing model (RADD)
SEDD_GRAPH_OF_OBJECTIVE = {SEDD_ABSORB: "absorb", SEDD_UNIFORM: "uniform", MASKED: "absorb"}


# ----------------------------------------------------------------------------------------------------
# Predictors: (graph, noise, log_score_fn, x, t, dt) -> unnormalised probabilities of the next x [B, L, N]


def euler_probs(graph, noise, log_score_fn, x, t, dt):
    """Euler τ-leaping (SEDD Alg. 1): onehot(x) + dt·σ̄'(t)·Q̄(x, ·)."""
    sigma, rate = noise(t)
    reverse_rate = graph.reverse_rate(x, log_score_fn(x, sigma).exp())
    return F.one_hot(x, graph.num_states).to(reverse_rate.dtype) + (dt * rate)[:, None, None] * reverse_rate


def analytic_probs(graph, noise, log_score_fn, x, t, dt):
    """Tweedie τ-leaping (SEDD Alg. 2): staggered_score(s, Δσ) ⊙ column x of exp(Δσ Q), Δσ = σ̄(t) − σ̄(t − dt)."""
    sigma = noise.total(t)
    dsigma = sigma - noise.total(t - dt)
    score = log_score_fn(x, sigma).exp()
    return graph.staggered_score(score, dsigma) * graph.transp_transition(x, dsigma)


def denoise_probs(graph, noise, log_score_fn, x, t):
    """The last Tweedie step, from σ̄(t) to 0; MASK is never drawn."""
    sigma = noise.total(t)
    score = log_score_fn(x, sigma).exp()
    probs = graph.staggered_score(score, sigma) * graph.transp_transition(x, sigma)
    if graph.kind == "absorb":
        probs[..., graph.mask_token_id] = 0.0
    return probs


SEDD_PREDICTORS: dict[str, Callable] = {"euler": euler_probs, "analytic": analytic_probs}


# ----------------------------------------------------------------------------------------------------
# Settings and the score of a model


@dataclass
class SeddSamplerConfig:
    """How a SEDD model is sampled; `graph`, `noise` and friends come from the checkpoint's diffusion_config.

    `num_states` is the number of rows of the model's output; `time_conditioned=False` (absorbing only) reads a
    masked-diffusion model's logits as probabilities (RADD).
    """

    graph: str
    num_states: int
    mask_token_id: int | None = None
    noise: str = "loglinear"
    sigma_min: float = 1e-4
    sigma_max: float = 20.0
    time_eps: float = 1e-3
    time_conditioned: bool = True
    gen_length: int = 128
    steps: int = 128
    predictor: str = "euler"
    denoise: bool = True
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.predictor not in SEDD_PREDICTORS:
            raise ValueError(f"sedd sampler must be one of {sorted(SEDD_PREDICTORS)}, not {self.predictor!r}.")
        if self.steps < 1 or self.gen_length < 1:
            raise ValueError("steps and gen_length must be at least 1.")
        if not self.time_conditioned and self.graph != "absorb":
            raise ValueError(
                "a time-blind model can only be sampled with the absorbing graph (RADD); the uniform "
                "graph needs a model that takes the noise level."
            )

    @classmethod
    def from_diffusion_config(cls, diffusion_config: dict, num_states: int, **settings) -> SeddSamplerConfig:
        """Settings of a checkpoint: a SEDD one, or a masked-diffusion one read as a time-blind absorbing model."""
        objective = diffusion_config.get("objective")
        if objective not in SEDD_GRAPH_OF_OBJECTIVE:
            raise ValueError(f"objective {objective!r} has no SEDD sampler.")
        masked = objective == MASKED
        if masked and diffusion_config.get("shift_logits"):
            raise ValueError("a shifted (AR-adapted) masked-diffusion checkpoint cannot be read as a SEDD model.")
        return cls(
            graph=SEDD_GRAPH_OF_OBJECTIVE[objective],
            num_states=num_states,
            mask_token_id=diffusion_config.get("mask_token_id"),
            noise="loglinear" if masked else diffusion_config["noise"],
            sigma_min=diffusion_config.get("sigma_min", 1e-4),
            sigma_max=diffusion_config.get("sigma_max", 20.0),
            time_eps=diffusion_config.get("time_eps", 1e-3),
            time_conditioned=not masked and diffusion_config.get("time_conditioned", True),
            **settings,
        )


def model_log_score(model, config: SeddSamplerConfig, attention_mask, position_ids) -> Callable:
    """log_score_fn(x, sigma) -> float64 log-scores [B, L, N] of `model` (0 at the input token)."""

    def log_score_fn(x, sigma):
        inputs = {"input_ids": x, "attention_mask": attention_mask, "position_ids": position_ids}
        if config.time_conditioned:
            log_score = model(**inputs, sigma=sigma).logits
        else:
            log_score = radd_log_score(model(**inputs).logits, sigma, config.mask_token_id)
        return zero_input_entry(log_score.double(), x)

    return log_score_fn


# ----------------------------------------------------------------------------------------------------
# The loop


@torch.no_grad()
def sedd_generate(
    model,
    prompt_ids,
    config: SeddSamplerConfig,
    *,
    suffix_ids=(),
    attention_mask=None,
    seed=None,
    generator=None,
    trace: bool = False,
    on_step: Callable[[StepFrame], None] | None = None,
    **settings,
) -> GenerationResult:
    """Sample `gen_length` tokens after each prompt (empty prompts: unconditional) and before `suffix_ids` (the same
    token ids after every row's generated span; empty: none) with a SEDD sampler.

    Same conventions as `diff_trainer.sampling.generate`: left-padded prompts, `seed`/`generator`, and a
    `StepFrame` per step whose `committed` marks the positions that changed in that step.
    """
    config = replace(config, **settings)
    device = next(model.parameters()).device
    pad_token_id = next(i for i in (config.pad_token_id, config.mask_token_id, 0) if i is not None)
    prompts, prompt_attention = left_pad(prompt_ids, attention_mask, pad_token_id, device)
    batch_size, start = prompts.shape
    suffix = suffix_rows(suffix_ids, batch_size, device)
    limit = context_length(model)
    if limit is not None and start + config.gen_length + suffix.shape[1] > limit:
        raise ValueError(
            f"prompt ({start} positions) + gen_length ({config.gen_length}) + suffix "
            f"({suffix.shape[1]}) exceeds the model's context of {limit} positions."
        )
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    graph = get_graph(config.graph, config.num_states, config.mask_token_id)
    noise = get_sedd_noise(config.noise, config.sigma_min, config.sigma_max, config.time_eps)

    if graph.kind == "absorb":
        noise_start = graph.limit((batch_size, config.gen_length), device)
    else:
        noise_start = graph.limit((batch_size, config.gen_length), device, generator)
    fixed_ids = torch.cat([prompts, noise_start, suffix], dim=1)
    full_attention = torch.cat([prompt_attention, torch.ones_like(noise_start), torch.ones_like(suffix)], dim=1)
    is_fixed = torch.ones_like(fixed_ids, dtype=torch.bool)  # the prompt, its left padding and the suffix
    is_fixed[:, start : start + config.gen_length] = False
    position_ids = (full_attention.cumsum(-1) - 1).clamp(min=0)
    log_score_fn = model_log_score(model, config, full_attention, position_ids)
    predictor = SEDD_PREDICTORS[config.predictor]

    times = torch.linspace(1, SAMPLING_EPS, config.steps + 1, dtype=torch.float64, device=device)
    dt = (1 - SAMPLING_EPS) / config.steps
    x = fixed_ids.clone()
    frames = [] if trace else None
    for step in range(config.steps + (1 if config.denoise else 0)):
        before = x
        t = times[min(step, config.steps)].expand(batch_size)
        if step < config.steps:
            probs = predictor(graph, noise, log_score_fn, x, t, dt)
        else:
            probs = denoise_probs(graph, noise, log_score_fn, x, t)
        x = sample_categorical(probs, generator)
        x = torch.where(is_fixed, fixed_ids, x)  # re-impose the prompt and the suffix
        if trace or on_step is not None:
            frame = StepFrame(
                step,
                [0] * batch_size,
                x.cpu().clone(),
                (x != before).cpu(),
                torch.full(x.shape, float("nan"), dtype=torch.float64),
                full_attention.cpu(),
                start,
            )
            if trace:
                frames.append(frame)
            if on_step is not None:
                on_step(frame)
    nfe = config.steps + (1 if config.denoise else 0)
    return GenerationResult(x, full_attention, start, nfe, trace=frames, suffix_length=suffix.shape[1])
