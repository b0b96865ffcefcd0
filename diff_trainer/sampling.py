"""Samplers for masked-diffusion language models: one denoising loop, small interchangeable strategies.

A prompt is followed by `gen_length` mask tokens. The masked region is filled left to right in blocks of
`block_length` (semi-autoregressive); inside a block, each step predicts every masked position at once and
commits only some of the predictions, the most confident ones (or random ones), leaving the rest masked.

Ideas and where they come from (the code here is our own):
- LLaDA `generate.py` (Nie et al., 2025): blocks, `steps` spread evenly over blocks and over each block's
  masks (`num_transfer_tokens`), Gumbel-max sampling with float64 noise, `low_confidence` / `random`
  remasking, classifier-free guidance with the prompt masked out, forbidding EOS or ranking it last.
- Fast-dLLM (Wu et al., 2025): confidence-threshold parallel decoding (commit every prediction whose
  confidence reaches the threshold, always at least the best one).
- Dream (Ye et al., 2025): `margin` (top-1 minus top-2 probability) and `entropy` confidences, and the
  shifted logits of AR-adapted models (logits at i predict token i+1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

EOS_HANDLING = ("none", "stop", "forbid", "rank_last")


# ----------------------------------------------------------------------------------------------------
# Confidence strategies: (probabilities [B, n, V], chosen ids [B, n], generator) -> confidence [B, n].
# Higher confidence = committed earlier.


def chosen_probability(probs: torch.Tensor, chosen: torch.Tensor, generator) -> torch.Tensor:
    """Probability of the predicted token (LLaDA's `low_confidence`: the least confident stay masked)."""
    return probs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)


def random_confidence(probs: torch.Tensor, chosen: torch.Tensor, generator) -> torch.Tensor:
    """Uniform noise: which predictions are committed is chosen at random (LLaDA's `random`)."""
    return torch.rand(chosen.shape, generator=generator, dtype=torch.float64, device=chosen.device)


def top2_margin(probs: torch.Tensor, chosen: torch.Tensor, generator) -> torch.Tensor:
    """Top-1 minus top-2 probability (Dream's `topk_margin`)."""
    top2 = probs.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def negative_entropy(probs: torch.Tensor, chosen: torch.Tensor, generator) -> torch.Tensor:
    """Σ p log p, i.e. minus the entropy of the prediction (Dream's `entropy`); 0 for a certain one."""
    return (probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)


CONFIDENCE_STRATEGIES: dict[str, Callable] = {
    "low_confidence": chosen_probability,
    "random": random_confidence,
    "margin": top2_margin,
    "entropy": negative_entropy,
}


# ----------------------------------------------------------------------------------------------------
# Settings, results and trace frames


@dataclass
class SamplerConfig:
    """Everything that decides how a masked-diffusion model is sampled.

    `steps` is the total number of denoising steps, spread evenly over the `gen_length // block_length`
    blocks; it must be a multiple of the number of blocks and give at most `block_length` steps per block
    (a step must commit at least one token). With a `threshold` (Fast-dLLM), `steps` is not used: each
    block takes as many steps as it needs, at most `block_length`. The threshold is compared with the
    confidence of the chosen `remasking` strategy (a probability for `low_confidence`, a probability gap
    for `margin`, minus the entropy for `entropy`).
    `guidance_scale` w > 0 turns on classifier-free guidance. `eos_handling`: "none"; "stop" (once a
    finished block holds an EOS, fill the rest of that row with EOS and stop sampling it); "forbid" (EOS is
    never predicted); "rank_last" (positions predicted as EOS are committed after all others).
    """

    mask_token_id: int
    gen_length: int = 128
    steps: int = 128
    block_length: int | None = None
    temperature: float = 0.0
    remasking: str = "low_confidence"
    guidance_scale: float = 0.0
    threshold: float | None = None
    shift: bool = False
    eos_token_id: int | None = None
    eos_handling: str = "none"
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.block_length is None:
            self.block_length = self.gen_length
        if self.gen_length < 1 or self.block_length < 1:
            raise ValueError("gen_length and block_length must be positive.")
        if self.gen_length % self.block_length:
            raise ValueError(
                f"gen_length ({self.gen_length}) must be a multiple of block_length ({self.block_length})."
            )
        if self.threshold is None:
            if self.steps < self.num_blocks or self.steps % self.num_blocks:
                raise ValueError(
                    f"steps ({self.steps}) must be a positive multiple of the number of blocks "
                    f"({self.num_blocks} = gen_length {self.gen_length} / block_length {self.block_length})."
                )
            if self.steps_per_block > self.block_length:
                raise ValueError(
                    f"{self.steps_per_block} steps per block exceed block_length ({self.block_length}): "
                    "some steps would commit nothing. Use at most gen_length steps."
                )
        if self.remasking not in CONFIDENCE_STRATEGIES:
            raise ValueError(f"remasking must be one of {sorted(CONFIDENCE_STRATEGIES)}, not {self.remasking!r}.")
        if self.threshold is not None and self.remasking == "random":
            raise ValueError("threshold decoding needs a confidence; it cannot be combined with remasking='random'.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}.")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, not {self.guidance_scale}.")
        if self.eos_handling not in EOS_HANDLING:
            raise ValueError(f"eos_handling must be one of {EOS_HANDLING}, not {self.eos_handling!r}.")
        if self.eos_handling != "none" and self.eos_token_id is None:
            raise ValueError(f"eos_handling={self.eos_handling!r} needs eos_token_id.")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


@dataclass
class StepFrame:
    """The state after one denoising step (tensors on CPU, shape [B, T] over the whole padded sequence)."""

    step: int  # 0-based count over all blocks
    block: int
    sequences: torch.Tensor  # token ids after this step
    committed: torch.Tensor  # bool: positions unmasked in this step
    confidence: torch.Tensor  # confidence of each committed position, NaN elsewhere
    attention_mask: torch.Tensor  # 0 on left padding
    generation_start: int  # index of the first generated position


@dataclass
class GenerationResult:
    """Sampled sequences ([B, T]: left-padded prompt then `gen_length` tokens) and how they were made.

    `nfe` counts network evaluations per sequence (a guided step counts two: conditional and unconditional).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    generation_start: int
    nfe: int
    trace: list[StepFrame] | None = field(default=None)

    @property
    def generated(self) -> torch.Tensor:
        """The generated part of every row, [B, gen_length]."""
        return self.sequences[:, self.generation_start:]


# ----------------------------------------------------------------------------------------------------
# Small pieces of the loop


def num_transfer_tokens(masked_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """How many masks each row commits at each of `steps` steps: n // steps, +1 in the first n % steps."""
    base = masked_counts // steps
    remainder = masked_counts % steps
    extra = torch.arange(steps, device=masked_counts.device) < remainder.unsqueeze(-1)
    return base.unsqueeze(-1) + extra.long()


def sample_tokens(logits: torch.Tensor, temperature: float, generator=None) -> torch.Tensor:
    """Argmax at temperature 0, else a draw from softmax(logits / T) with float64 Gumbel noise."""
    if temperature == 0:
        return logits.argmax(-1)
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits.double() / temperature + gumbel).argmax(-1)  # Gumbel-max: argmax(l/T + G) ~ softmax(l/T)


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance as in LLaDA (after Ho & Salimans, 2022): un + (w + 1)(cond − un)."""
    return unconditional + (scale + 1) * (conditional - unconditional)


def select_most_confident(confidence: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool mask of the `counts[b]` most confident candidates of each row (ties: the leftmost first)."""
    scores = confidence.masked_fill(~candidates, float("-inf"))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return (rank < counts.unsqueeze(-1)) & candidates


def left_pad(prompt_ids, attention_mask, pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as a left-padded [B, P] tensor and its attention mask (0 on padding)."""
    if isinstance(prompt_ids, torch.Tensor):
        ids = prompt_ids.to(device).long()
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(device).long()
        if (mask[:, 1:] < mask[:, :-1]).any():
            raise ValueError("attention_mask must be left padded (zeros only before the prompt).")
        return ids, mask
    if attention_mask is not None:
        raise ValueError("attention_mask is only accepted with a tensor of prompt ids.")
    if len(prompt_ids) == 0:
        raise ValueError("no prompts given.")
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompt_ids):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long, device=device)
            mask[row, width - len(prompt):] = 1
    return ids, mask


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count attended tokens only, so a left-padded row sees the positions of an unpadded one."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def context_length(model) -> int | None:
    """The longest sequence the model's positions allow, when its config says so."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


# ----------------------------------------------------------------------------------------------------
# The loop


class _Denoiser:
    """Computes the logits that predict the tokens of one block, with guidance and shift applied."""

    def __init__(self, model, config: SamplerConfig, attention_mask: torch.Tensor, is_prompt: torch.Tensor):
        self.model = model
        self.config = config
        self.attention_mask = attention_mask
        self.position_ids = padded_position_ids(attention_mask)
        self.is_prompt = is_prompt
        self.guided = config.guidance_scale > 0
        self.evaluations_per_call = 2 if self.guided else 1

    def __call__(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if self.guided:
            unconditional_input = x.masked_fill(self.is_prompt, self.config.mask_token_id)
            both = self._forward(torch.cat([x, unconditional_input]), repeat=2)
            conditional, unconditional = both.chunk(2)
            logits = guided_logits(conditional, unconditional, self.config.guidance_scale)
        else:
            logits = self._forward(x, repeat=1)
        # Shifted models predict token i from the logits at i - 1 (Dream / DiffuLLaMA adaptation).
        offset = 1 if self.config.shift else 0
        return logits[:, start - offset:end - offset].double()

    def _forward(self, input_ids: torch.Tensor, repeat: int) -> torch.Tensor:
        output = self.model(
            input_ids=input_ids,
            attention_mask=self.attention_mask.repeat(repeat, 1),
            position_ids=self.position_ids.repeat(repeat, 1),
        )
        return output.logits


def _predict(logits: torch.Tensor, config: SamplerConfig, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted ids and their confidence for every position of a block."""
    logits = logits.to(torch.float32, copy=True)  # half-precision confidences would tie
    logits[..., config.mask_token_id] = float("-inf")  # committing a mask would leave the position masked
    if config.eos_handling == "forbid":
        logits[..., config.eos_token_id] = float("-inf")
    tokens = sample_tokens(logits, config.temperature, generator)
    probs = torch.softmax(logits, dim=-1)
    confidence = CONFIDENCE_STRATEGIES[config.remasking](probs, tokens, generator)
    if config.eos_handling == "rank_last":
        # Finite, so an EOS prediction is still committed once nothing else is left.
        confidence = confidence.masked_fill(tokens == config.eos_token_id, torch.finfo(confidence.dtype).min)
    return tokens, confidence


@torch.no_grad()
def generate(
    model,
    prompt_ids,
    config: SamplerConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    trace: bool = False,
    on_step: Callable[[StepFrame], None] | None = None,
    **settings,
) -> GenerationResult:
    """Sample `gen_length` tokens after each prompt with a masked-diffusion `model`.

    `prompt_ids`: a list of id lists (any lengths; they are left padded) or a [B, P] tensor with an optional
    left-padded `attention_mask`. Settings come from `config` and/or keyword arguments named like the
    `SamplerConfig` fields (keywords win). `seed` (or a `generator`) makes every random choice repeatable.
    `trace=True` keeps a `StepFrame` per step in the result; `on_step` is called with each frame.
    The model is called as `model(input_ids=, attention_mask=, position_ids=)` and should be in eval mode.
    """
    config = replace(config, **settings) if config is not None else SamplerConfig(**settings)
    device = next(model.parameters()).device
    pad_token_id = next(i for i in (config.pad_token_id, config.eos_token_id, 0) if i is not None)
    prompts, prompt_attention = left_pad(prompt_ids, attention_mask, pad_token_id, device)
    batch_size, start_of_generation = prompts.shape
    limit = context_length(model)
    if limit is not None and start_of_generation + config.gen_length > limit:
        raise ValueError(
            f"prompt ({start_of_generation} tokens) + gen_length ({config.gen_length}) exceeds the model's "
            f"context of {limit} positions."
        )
    if config.shift and (prompt_attention.sum(-1) == 0).any():
        raise ValueError("a shift model predicts each token from the one before it: every prompt needs a token.")
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    generated = torch.full((batch_size, config.gen_length), config.mask_token_id, dtype=torch.long, device=device)
    x = torch.cat([prompts, generated], dim=1)
    full_attention = torch.cat([prompt_attention, torch.ones_like(generated)], dim=1)
    is_prompt = torch.cat([prompt_attention.bool(), torch.zeros_like(generated, dtype=torch.bool)], dim=1)
    denoise = _Denoiser(model, config, full_attention, is_prompt)
    frames = [] if trace else None
    nfe = step = 0

    for block in range(config.num_blocks):
        start = start_of_generation + block * config.block_length
        end = start + config.block_length
        if config.threshold is None:
            schedule = num_transfer_tokens((x[:, start:end] == config.mask_token_id).sum(-1), config.steps_per_block)
        block_step = 0
        while (masked := x[:, start:end] == config.mask_token_id).any():
            logits = denoise(x, start, end)
            nfe += denoise.evaluations_per_call
            tokens, confidence = _predict(logits, config, generator)
            if config.threshold is None:
                counts = schedule[:, block_step]
            else:  # Fast-dLLM: everything confident enough, at least the best one
                confident = ((confidence >= config.threshold) & masked).sum(-1)
                counts = confident.clamp(min=1)
            commit = select_most_confident(confidence, masked, counts)
            x[:, start:end] = torch.where(commit, tokens, x[:, start:end])
            if trace or on_step is not None:
                frame = _frame(step, block, x, commit, confidence, full_attention, start, start_of_generation)
                if trace:
                    frames.append(frame)
                if on_step is not None:
                    on_step(frame)
            step += 1
            block_step += 1
        if config.eos_handling == "stop":
            finished = (x[:, start:end] == config.eos_token_id).any(-1)
            x[finished, end:] = config.eos_token_id
            if not (x[:, end:] == config.mask_token_id).any():
                break

    return GenerationResult(x, full_attention, start_of_generation, nfe, frames)


def _frame(step, block, x, commit, confidence, attention_mask, start, generation_start) -> StepFrame:
    """A CPU snapshot of the sequences with this step's commits and their confidences."""
    committed = torch.zeros_like(x, dtype=torch.bool)
    committed[:, start:start + commit.shape[1]] = commit
    scores = torch.full(x.shape, float("nan"), dtype=torch.float64, device=x.device)
    scores[:, start:start + commit.shape[1]] = confidence.masked_fill(~commit, float("nan"))
    return StepFrame(
        step, block, x.cpu().clone(), committed.cpu(), scores.cpu(), attention_mask.cpu(), generation_start
    )
