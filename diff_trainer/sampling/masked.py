"""Samplers for masked-diffusion language models: one denoising loop, small interchangeable strategies.

A prompt is followed by `gen_length` mask tokens. The masked region is filled left to right in blocks of
`block_length` (semi-autoregressive); inside a block, each step predicts every masked position at once and
commits only some of the predictions, the most confident ones (or random ones), leaving the rest masked.

Ideas and where they come from (the code here is our own):
- LLaDA `generate.py` (Nie et al., 2025): blocks, `steps` spread evenly over blocks and over each block's
  masks (`num_transfer_tokens`), Gumbel-max sampling with float64 noise, `low_confidence` / `random`
  remasking, classifier-free guidance with the prompt masked out, forbidding EOS or ranking it last.
- Fast-dLLM (Wu et al., 2025): confidence-threshold parallel decoding (commit every prediction whose
  confidence reaches the threshold, always at least the best one) and the approximate key/value caches: the
  prefix (prompt and finished blocks) or both sides of the block (`dual`), computed at the block's first step
  and reused for its other steps.
- Dream (Ye et al., 2025): `margin` (top-1 minus top-2 probability) and `entropy` confidences, and the
  shifted logits of AR-adapted models (logits at i predict token i+1).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache

EOS_HANDLING = ("none", "stop", "forbid", "rank_last")
CACHE_MODES = ("none", "prefix", "dual")
# Architectures whose bidirectional forward (config.is_causal = False) takes a DynamicCache of other positions.
CACHED_MODEL_TYPES = ("llama", "qwen2")


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
    `guidance_scale` w > 0 turns on classifier-free guidance. `eos_token_id` is one id or several (LLaDA stops
    at EOS and at EOT); the first fills finished rows. `eos_handling`: "none"; "stop" (once a finished block
    holds any of them, fill the rest of that row with EOS and stop sampling it); "forbid" (they are never
    predicted); "rank_last" (positions predicted as one of them are committed after all others).
    `forbidden_token_ids` are never predicted (like the mask token): give the tokenizer's special tokens other
    than EOS (`special_token_ids_to_forbid`), so that no `<DFF>`, padding or BOS is ever committed.
    `cache` (Fast-dLLM): "none" runs the whole sequence at every step; "prefix" computes the keys/values of the prompt
    and the finished blocks at the first step of each block and feeds only the block and what follows it in the other
    steps; "dual" also reuses the keys/values of the masked positions after the block and feeds only the block. Both
    are approximations of the bidirectional forward (reused keys/values do not see the tokens committed since they
    were computed); bidirectional Llama and Qwen2 models only.
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
    eos_token_id: int | tuple[int, ...] | None = None
    eos_handling: str = "none"
    pad_token_id: int | None = None
    forbidden_token_ids: tuple[int, ...] = ()
    cache: str = "none"

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
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, not {self.cache!r}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}.")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, not {self.guidance_scale}.")
        if self.eos_handling not in EOS_HANDLING:
            raise ValueError(f"eos_handling must be one of {EOS_HANDLING}, not {self.eos_handling!r}.")
        if isinstance(self.eos_token_id, (list, tuple, set)):
            self.eos_token_id = tuple(int(i) for i in self.eos_token_id) or None
        if self.eos_handling != "none" and self.eos_token_id is None:
            raise ValueError(f"eos_handling={self.eos_handling!r} needs eos_token_id.")
        self.forbidden_token_ids = tuple(sorted(set(self.forbidden_token_ids)))
        if set(self.eos_ids) & set(self.forbidden_token_ids):
            raise ValueError("forbidden_token_ids must not hold the EOS id: use eos_handling='forbid' to forbid EOS.")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation (empty without an EOS)."""
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


@dataclass
class StepFrame:
    """The state after one denoising step (tensors on CPU, shape [B, T] over the whole padded sequence)."""

    step: int  # 0-based count of the batch's steps
    blocks: list[int]  # the block each row worked on in this step (-1: the row had finished)
    sequences: torch.Tensor  # token ids after this step
    committed: torch.Tensor  # bool: positions unmasked in this step
    confidence: torch.Tensor  # confidence of each committed position, NaN elsewhere
    attention_mask: torch.Tensor  # 0 on left padding
    generation_start: int  # index of the first generated position


@dataclass
class GenerationResult:
    """Sampled sequences ([B, T]: left-padded prompt, `gen_length` tokens, then the fixed suffix of
    `suffix_length` tokens, if any) and how they were made.

    `nfe` counts the network evaluations of the batch (model calls; a guided call counts two: conditional and
    unconditional); `row_nfe` those each row took part in (rows advance on their own and leave when done).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    generation_start: int
    nfe: int
    trace: list[StepFrame] | None = field(default=None)
    row_nfe: list[int] | None = None
    suffix_length: int = 0

    def __post_init__(self):
        if self.row_nfe is None:
            self.row_nfe = [self.nfe] * self.sequences.shape[0]

    @property
    def generated(self) -> torch.Tensor:
        """The generated part of every row, [B, gen_length] (without the suffix)."""
        return self.sequences[:, self.generation_start : self.sequences.shape[1] - self.suffix_length]


def special_token_ids_to_forbid(tokenizer, stop_ids: int | tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The tokenizer's special ids that a sampler must never commit: all but EOS and the other `stop_ids` (EOT)."""
    stops = {stop_ids} if isinstance(stop_ids, int) else set(stop_ids or ())
    return tuple(sorted(set(tokenizer.all_special_ids) - {tokenizer.eos_token_id} - stops))


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
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
            mask[row, width - len(prompt) :] = 1
    return ids, mask


def suffix_rows(suffix_ids, batch_size: int, device) -> torch.Tensor:
    """The same fixed suffix ids for every row, [B, S] (S = 0 without a suffix)."""
    return torch.as_tensor(list(suffix_ids), dtype=torch.long, device=device).expand(batch_size, -1)


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count attended tokens only, so a left-padded row sees the positions of an unpadded one."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def context_length(model) -> int | None:
    """The longest sequence the model's positions allow, when its config says so."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_cache_support(model, cache: str) -> None:
    """Refuse a key/value cache for a model whose forward cannot take one as the cached denoiser needs."""
    if cache == "none":
        return
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or ())
    if model_type not in CACHED_MODEL_TYPES or getattr(config, "is_causal", True) or sliding:
        raise ValueError(
            f"cache={cache!r} needs a bidirectional (config.is_causal = False) {' or '.join(CACHED_MODEL_TYPES)} "
            f"model without sliding-window layers; this one is {model_type or type(model).__name__} "
            f"(is_causal={getattr(config, 'is_causal', None)}). Use cache='none'."
        )


def cache_keyword_of(model) -> str:
    """The forward's name for the key/value cache: `cache` from transformers 5.24 on, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword_of_class(type(base))


@functools.cache
def _cache_keyword_of_class(model_class) -> str:
    """`cache_keyword_of` per model class (reading a signature costs more than a small model's forward step)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _windows(values: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """values[b, starts[b]:starts[b] + length] for every row b (the positions must exist)."""
    index = starts.unsqueeze(1) + torch.arange(length, device=values.device)
    if values.dim() == 3:
        index = index.unsqueeze(-1).expand(-1, -1, values.shape[-1])
    return values.gather(1, index)


# ----------------------------------------------------------------------------------------------------
# The loop


class _Denoiser:
    """Computes the logits that predict each row's current block, with guidance, shift and the cache applied.

    Sequences are numbered as rows of the batch; with guidance, row b's unconditional copy is sequence b + B.
    With a cache, each sequence's keys/values (all layers, all positions) are kept from its last full forward, made
    at the first step of its current block (`refresh`); in the other steps only the block (dual) or the block and
    everything after it (prefix) are fed, and the kept keys/values of the other positions stand in for them.
    """

    def __init__(self, model, config: SamplerConfig, attention_mask: torch.Tensor, is_prompt: torch.Tensor):
        self.model = model
        self.config = config
        self.attention_mask = attention_mask
        self.position_ids = padded_position_ids(attention_mask)
        self.is_prompt = is_prompt
        self.guided = config.guidance_scale > 0
        self.evaluations_per_call = 2 if self.guided else 1
        self.offset = 1 if config.shift else 0  # shifted models predict token i from the logits at i - 1
        self.forwards = 0  # network evaluations of the batch
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, keys and values [2B or B, H, T, D]
        if config.cache != "none":
            check_cache_support(model, config.cache)
            self.cache_keyword = cache_keyword_of(model)

    def __call__(self, x: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, refresh: torch.Tensor):
        """Logits [len(rows), block_length, V] (float64) for the blocks starting at `starts` of `rows` of `x`."""
        inputs, sequences, window_starts = x[rows], rows, starts - self.offset
        if self.guided:
            unconditional = inputs.masked_fill(self.is_prompt[rows], self.config.mask_token_id)
            inputs = torch.cat([inputs, unconditional])
            sequences = torch.cat([rows, rows + x.shape[0]])
            window_starts, refresh = window_starts.repeat(2), refresh.repeat(2)
        if self.config.cache == "none":
            logits = self._full_forward(inputs, sequences, window_starts, keep=False)
        else:  # rows at the first step of their block refresh their keys/values, the others reuse them
            parts = [(refresh, lambda *part: self._full_forward(*part, keep=True)), (~refresh, self._cached_forward)]
            logits = None
            for part, forward in parts:
                if part.any():
                    part_logits = forward(inputs[part], sequences[part], window_starts[part])
                    if logits is None:
                        logits = part_logits.new_empty((len(sequences), *part_logits.shape[1:]))
                    logits[part] = part_logits
        if self.guided:
            conditional, unconditional = logits.chunk(2)
            logits = guided_logits(conditional, unconditional, self.config.guidance_scale)
        return logits.double()

    def _call(self, **inputs):
        self.forwards += self.evaluations_per_call
        return self.model(**inputs)

    def _full_forward(self, inputs, sequences, window_starts, keep: bool) -> torch.Tensor:
        """The whole sequences; with `keep`, their keys/values are kept for the next steps of their blocks."""
        rows = sequences % self.attention_mask.shape[0]
        extra = {self.cache_keyword: DynamicCache(), "use_cache": True} if keep else {}
        output = self._call(
            input_ids=inputs, attention_mask=self.attention_mask[rows], position_ids=self.position_ids[rows], **extra
        )
        if keep:
            self._keep(sequences, output[self.cache_keyword])
        return _windows(output.logits, window_starts, self.config.block_length)

    def _keep(self, sequences: torch.Tensor, cache) -> None:
        if not self.kept:
            copies = self.attention_mask.shape[0] * self.evaluations_per_call
            self.kept = [
                (
                    layer.keys.new_zeros((copies, *layer.keys.shape[1:])),
                    layer.values.new_zeros((copies, *layer.values.shape[1:])),
                )
                for layer in cache.layers
            ]
        for (keys, values), layer in zip(self.kept, cache.layers):
            keys[sequences], values[sequences] = layer.keys, layer.values

    def _cached_forward(self, inputs, sequences, window_starts) -> torch.Tensor:
        """Feed each sequence's window only; its other positions attend through their kept keys/values.

        The window is the block (dual) or the block and everything after it (prefix), one position earlier for
        shifted models. Kept keys/values inside the window are masked out (the fed ones replace them); key order
        does not matter to bidirectional attention, so the fed keys simply follow the kept ones.
        """
        rows = sequences % self.attention_mask.shape[0]
        length = inputs.shape[1]
        if self.config.cache == "dual":
            width = self.config.block_length + self.offset
        else:
            width = length - int(window_starts.min())
        fed_positions = window_starts.unsqueeze(1) + torch.arange(width, device=inputs.device)
        fed_exists = fed_positions < length  # prefix windows of later blocks are shorter: pad them
        fed_positions = fed_positions.clamp(max=length - 1)
        positions = torch.arange(length, device=inputs.device)
        in_window = (positions >= window_starts.unsqueeze(1)) & (positions < window_starts.unsqueeze(1) + width)
        attention = torch.cat([self.attention_mask[rows] * ~in_window, fed_exists.long()], dim=1)
        cache = DynamicCache()
        for index, (keys, values) in enumerate(self.kept):
            cache.update(keys[sequences], values[sequences], index)
        output = self._call(
            input_ids=inputs.gather(1, fed_positions),
            attention_mask=attention,
            position_ids=self.position_ids[rows].gather(1, fed_positions),
            **{self.cache_keyword: cache, "use_cache": True},
        )
        return output.logits[:, : self.config.block_length]


def predict_tokens(logits: torch.Tensor, config: SamplerConfig, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted ids and their confidence for every position of a block."""
    logits = logits.to(torch.float32, copy=True)  # half-precision confidences would tie
    logits[..., config.mask_token_id] = float("-inf")  # committing a mask would leave the position masked
    if config.forbidden_token_ids:
        logits[..., list(config.forbidden_token_ids)] = float("-inf")
    if config.eos_handling == "forbid":
        logits[..., list(config.eos_ids)] = float("-inf")
    tokens = sample_tokens(logits, config.temperature, generator)
    probs = torch.softmax(logits, dim=-1)
    confidence = CONFIDENCE_STRATEGIES[config.remasking](probs, tokens, generator)
    if config.eos_handling == "rank_last":
        # Finite, so an EOS prediction is still committed once nothing else is left.
        is_eos = torch.isin(tokens, torch.tensor(config.eos_ids, device=tokens.device))
        confidence = confidence.masked_fill(is_eos, torch.finfo(confidence.dtype).min)
    return tokens, confidence


@torch.no_grad()
def generate(
    model,
    prompt_ids,
    config: SamplerConfig | None = None,
    *,
    suffix_ids=(),
    attention_mask: torch.Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    trace: bool = False,
    on_step: Callable[[StepFrame], None] | None = None,
    **settings,
) -> GenerationResult:
    """Sample `gen_length` tokens after each prompt with a masked-diffusion `model` (and before `suffix_ids`, the
    same fixed ids after every row's generated span: infilling; the guidance's unconditional copy masks them too).

    `prompt_ids`: a list of id lists (any lengths; they are left padded) or a [B, P] tensor with an optional
    left-padded `attention_mask`. Settings come from `config` and/or keyword arguments named like the
    `SamplerConfig` fields (keywords win). `seed` (or a `generator`) makes every random choice repeatable.
    `trace=True` keeps a `StepFrame` per step in the result; `on_step` is called with each frame.
    The model is called as `model(input_ids=, attention_mask=, position_ids=)` and should be in eval mode.

    Rows advance on their own: a row whose block is complete moves to its next block at the next step, and a row
    that is done (last block, or EOS under eos_handling="stop") leaves the batch, so each row gets the steps it
    would get alone (greedy: the same tokens as sampled alone).
    """
    config = replace(config, **settings) if config is not None else SamplerConfig(**settings)
    device = next(model.parameters()).device
    pad_token_id = next(i for i in (config.pad_token_id, *config.eos_ids, 0) if i is not None)
    prompts, prompt_attention = left_pad(prompt_ids, attention_mask, pad_token_id, device)
    batch_size, start_of_generation = prompts.shape
    suffix = suffix_rows(suffix_ids, batch_size, device)
    end_of_generation = start_of_generation + config.gen_length
    limit = context_length(model)
    if limit is not None and end_of_generation + suffix.shape[1] > limit:
        raise ValueError(
            f"prompt ({start_of_generation} tokens) + gen_length ({config.gen_length}) + suffix ({suffix.shape[1]}) "
            f"exceeds the model's context of {limit} positions."
        )
    if config.shift and (prompt_attention.sum(-1) == 0).any():
        raise ValueError("a shift model predicts each token from the one before it: every prompt needs a token.")
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    generated = torch.full((batch_size, config.gen_length), config.mask_token_id, dtype=torch.long, device=device)
    x = torch.cat([prompts, generated, suffix], dim=1)
    full_attention = torch.cat([prompt_attention, torch.ones_like(generated), torch.ones_like(suffix)], dim=1)
    is_prompt = torch.cat(
        [
            prompt_attention.bool(),
            torch.zeros_like(generated, dtype=torch.bool),
            torch.ones_like(suffix, dtype=torch.bool),
        ],
        dim=1,
    )
    denoise = _Denoiser(model, config, full_attention, is_prompt)
    eos_ids = torch.tensor(config.eos_ids, dtype=torch.long, device=device)
    block = torch.zeros(batch_size, dtype=torch.long, device=device)  # each row's current block
    block_step = torch.zeros_like(block)  # steps each row has taken in it
    active = torch.ones(batch_size, dtype=torch.bool, device=device)
    row_nfe = torch.zeros_like(block)
    if config.threshold is None:  # every block starts fully masked, so one schedule serves all
        schedule = num_transfer_tokens(torch.tensor(config.block_length, device=device), config.steps_per_block)
    frames = [] if trace else None
    step = 0

    while active.any():
        rows = active.nonzero().squeeze(1)
        starts = start_of_generation + block[rows] * config.block_length
        logits = denoise(x, rows, starts, refresh=block_step[rows] == 0)
        row_nfe[rows] += denoise.evaluations_per_call
        window = _windows(x[rows], starts, config.block_length)
        masked = window == config.mask_token_id
        tokens, confidence = predict_tokens(logits, config, generator)
        if config.threshold is None:
            counts = schedule[block_step[rows]]
        else:  # Fast-dLLM: everything confident enough, at least the best one
            counts = ((confidence >= config.threshold) & masked).sum(-1).clamp(min=1)
        commit = select_most_confident(confidence, masked, counts)
        window = torch.where(commit, tokens, window)
        positions = starts.unsqueeze(1) + torch.arange(config.block_length, device=device)
        x[rows.unsqueeze(1), positions] = window
        if trace or on_step is not None:
            blocks = torch.where(active, block, -1).tolist()
            frame = step_frame(
                step, blocks, x, rows, positions, commit, confidence, full_attention, start_of_generation
            )
            if trace:
                frames.append(frame)
            if on_step is not None:
                on_step(frame)
        step += 1
        block_step[rows] += 1

        complete = ~(window == config.mask_token_id).any(-1)
        if complete.any():
            finished = rows[complete]
            block[finished] += 1
            block_step[finished] = 0
            if config.eos_handling == "stop":
                stopped = torch.isin(window[complete], eos_ids).any(-1)
                span = torch.arange(x.shape[1], device=device)
                after_block = (span >= positions[complete, -1:] + 1) & (span < end_of_generation)  # not the suffix
                fill = after_block & stopped.unsqueeze(1)
                x[finished] = torch.where(fill, config.eos_ids[0], x[finished])
                active[finished[stopped]] = False
            active &= block < config.num_blocks

    return GenerationResult(
        x, full_attention, start_of_generation, denoise.forwards, frames, row_nfe.tolist(), suffix.shape[1]
    )


def step_frame(step, blocks, x, rows, positions, commit, confidence, attention_mask, generation_start) -> StepFrame:
    """A CPU snapshot of the sequences with this step's commits and their confidences."""
    committed = torch.zeros_like(x, dtype=torch.bool)
    committed[rows.unsqueeze(1), positions] = commit
    scores = torch.full(x.shape, float("nan"), dtype=torch.float64, device=x.device)
    scores[rows.unsqueeze(1), positions] = confidence.double().masked_fill(~commit, float("nan"))
    return StepFrame(
        step, blocks, x.cpu().clone(), committed.cpu(), scores.cpu(), attention_mask.cpu(), generation_start
    )
