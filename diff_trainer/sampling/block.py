"""The block-diffusion sampler (BD3-LM): blocks left to right, masked diffusion inside a block, an exact KV cache.

Blocks are aligned to positions as in training: block b holds positions [bL', (b+1)L') of a row, so the first block
a row generates may start inside its prompt (the prompt's tail is fed with it, unmasked, as training fed it in the
noisy block). Inside a block the masked sampler's strategies run over the block only (`sampling/masked.py`: low
confidence and the other confidences, threshold decoding, temperature with Gumbel noise, EOS handling); the block is
filled in sub-blocks of `block_length` tokens, `steps_per_block` steps each (LLaDA's semi-autoregressive schedule).

The cache is exact: clean blocks never attend to later ones, so the keys and values of a finished block, computed
once by running it clean over the cache (one forward of the block; shift models also take from it the logits that
predict the next block's first token), are what every later forward would compute. Each denoising step is then one
forward of one block over the cache. With `use_cache=False` every step instead runs the whole prefix with the
block-causal mask (the reference the cache must equal token for token).

Rows advance on their own and leave when done; generated tokens past `gen_length` in a row's last block stay masked
and are cut off. Greedy rows get the tokens they would get alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache

from ..diffusion.attention import additive_mask
from ..diffusion.block import block_causal_allowed
from .masked import (
    GenerationResult,
    SamplerConfig,
    StepFrame,
    cache_keyword_of,
    context_length,
    left_pad,
    num_transfer_tokens,
    padded_position_ids,
    predict_tokens,
    select_most_confident,
    step_frame,
)


@dataclass
class BlockSamplerConfig(SamplerConfig):
    """`SamplerConfig` of a block-diffusion checkpoint: `model_block_size` is its L' (block_length, the sub-block,
    divides it)."""

    model_block_size: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_block_settings(self, self.model_block_size)


def sample_blocks(model, prompt_ids, config: BlockSamplerConfig, suffix_ids=(), **options) -> GenerationResult:
    """`generate` with the checkpoint's block size (`settings.run_sampler`'s signature; no suffix)."""
    if len(suffix_ids):
        raise ValueError("the block sampler generates left to right: a suffix is not supported; drop --suffix.")
    return generate(model, prompt_ids, config, block_size=config.model_block_size, **options)


def check_block_settings(config: SamplerConfig, block_size: int) -> None:
    """Refuse settings the block sampler cannot honour, naming the setting to change."""
    if block_size < 1 or block_size % config.block_length:
        raise ValueError(
            f"block_length {config.block_length} (the sub-block) must divide the model's block size {block_size}."
        )
    if config.guidance_scale > 0:
        raise ValueError("the block sampler has no classifier-free guidance: use guidance_scale=0.")
    if config.cache != "none":
        raise ValueError(
            f"cache={config.cache!r} is the masked sampler's approximate cache; the block sampler's "
            "cache is exact and always on: use cache='none'."
        )


class _BlockDenoiser:
    """Logits predicting the current block of each row; keeps the keys/values of every finished position.

    `kept` holds per layer the keys and values of every column [B, H, T, D]; a row's cached prefix is its columns
    before its current block (`starts`). `carry` [B, V] holds, for shift models, the logits at the position before
    each row's current block (from the forward that cached that position).
    """

    def __init__(self, model, config: SamplerConfig, block_size: int, attention_mask, position_ids, use_cache):
        self.model, self.config, self.block_size = model, config, block_size
        self.attention_mask, self.position_ids = attention_mask, position_ids
        self.use_cache = use_cache
        self.dtype = next(model.parameters()).dtype
        self.cache_keyword = cache_keyword_of(model)
        self.forwards = 0
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.carry: torch.Tensor | None = None

    def _call(self, ids, rows, columns, allowed, cached_columns: int = 0):
        """Forward of `ids` (at `columns` of `rows`) seeing the kept columns [0, cached_columns) where `allowed`."""
        self.forwards += 1
        cache = DynamicCache()
        for index, (keys, values) in enumerate(self.kept):
            cache.update(keys[rows, :, :cached_columns], values[rows, :, :cached_columns], index)
        output = self.model(
            input_ids=ids,
            position_ids=self.position_ids[rows.unsqueeze(1), columns],
            attention_mask=additive_mask(allowed, self.dtype),
            **{self.cache_keyword: cache, "use_cache": True},
        )
        return output.logits, output[self.cache_keyword]

    def _store(self, rows, columns, cache) -> None:
        """Keep the keys/values of the fed `columns` (the last ones in `cache`) of each of `rows`."""
        width = columns.shape[1]
        if not self.kept:
            total = self.attention_mask.shape
            self.kept = [
                (
                    layer.keys.new_zeros((total[0], layer.keys.shape[1], total[1], layer.keys.shape[3])),
                    layer.values.new_zeros((total[0], layer.values.shape[1], total[1], layer.values.shape[3])),
                )
                for layer in cache.layers
            ]
        for (keys, values), layer in zip(self.kept, cache.layers):
            for i, row in enumerate(rows.tolist()):
                keys[row, :, columns[i]] = layer.keys[i, :, -width:]
                values[row, :, columns[i]] = layer.values[i, :, -width:]

    def _set_carry(self, rows, logits) -> None:
        if self.carry is None:
            self.carry = logits.new_zeros((self.attention_mask.shape[0], logits.shape[-1]))
        self.carry[rows] = logits

    def prefill(self, x, starts, prompt_lengths) -> bool:
        """Cache every row's prompt before its first block (block-causal, as training's clean half); whether it ran."""
        if not self.use_cache or not (prompt_lengths >= self.block_size).any():
            return False
        width = int(starts.max())
        rows = torch.arange(x.shape[0], device=x.device)
        columns = torch.arange(width, device=x.device).expand(x.shape[0], -1)
        allowed = block_causal_allowed(self.position_ids[:, :width], self.block_size, self.attention_mask[:, :width])
        logits, cache = self._call(x[:, :width], rows, columns, allowed)
        self._store(rows, columns, cache)
        self._set_carry(rows, logits[rows, (starts - 1).clamp(min=0)])
        return True

    def append(self, x, rows, starts) -> None:
        """Cache the finished block just before `starts` of each of `rows`, run clean over the cache."""
        if self.use_cache:
            logits = self._over_cache(x, rows, starts - self.block_size, keep=True)
            self._set_carry(rows, logits[:, -1])

    def _over_cache(self, x, rows, starts, keep: bool) -> torch.Tensor:
        columns = starts.unsqueeze(1) + torch.arange(self.block_size, device=x.device)
        cached = int(starts.max())
        kept_columns = torch.arange(cached, device=x.device)
        valid = self.attention_mask[rows, :cached].bool() & (kept_columns < starts.unsqueeze(1))
        allowed = torch.cat([valid, torch.ones_like(columns, dtype=torch.bool)], dim=1)
        allowed = allowed[:, None, None, :].expand(-1, 1, self.block_size, -1)
        logits, cache = self._call(x[rows.unsqueeze(1), columns], rows, columns, allowed, cached)
        if keep:
            self._store(rows, columns, cache)
        return logits

    def __call__(self, x, rows, starts) -> torch.Tensor:
        """Logits [len(rows), L', V] (float64) predicting the blocks starting at `starts` of `rows`."""
        if self.use_cache:
            logits = self._over_cache(x, rows, starts, keep=False)
            if self.carry is None:  # no prompt was cached: every first block starts at its prompt's first token
                self._set_carry(rows, logits[:, 0])
            before = self.carry[rows]
        else:
            width = int(starts.max()) + self.block_size
            allowed = block_causal_allowed(
                self.position_ids[rows, :width], self.block_size, self.attention_mask[rows, :width]
            )
            columns = torch.arange(width, device=x.device).expand(len(rows), -1)
            full, _ = self._call(x[rows, :width], rows, columns, allowed)
            index = starts.unsqueeze(1) + torch.arange(self.block_size, device=x.device)
            logits = full[torch.arange(len(rows), device=x.device).unsqueeze(1), index]
            before = full[torch.arange(len(rows), device=x.device), (starts - 1).clamp(min=0)]
        if self.config.shift:  # the logits at i - 1 predict token i; the block's first token from the position before
            logits = torch.cat([before.unsqueeze(1), logits[:, :-1]], dim=1)
        return logits.double()


@torch.no_grad()
def generate(
    model,
    prompt_ids,
    config: SamplerConfig | None = None,
    *,
    block_size: int,
    attention_mask: torch.Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    trace: bool = False,
    on_step: Callable[[StepFrame], None] | None = None,
    use_cache: bool = True,
    **settings,
) -> GenerationResult:
    """Sample `gen_length` tokens after each prompt with a block-diffusion `model` of block size `block_size`.

    Settings as for `sampling.masked.generate` (`SamplerConfig` fields, keywords win); `block_length` is the sub-block
    (default: the whole block) and `steps` are spread evenly over the gen_length / block_length sub-blocks. `nfe`
    counts the forwards: one per step, plus, with the cache, one over the prompt and one per finished block that is
    followed by another.
    """
    if config is None:
        settings.setdefault("block_length", block_size)
        config = SamplerConfig(**settings)
    else:
        config = replace(config, **settings)
    check_block_settings(config, block_size)
    device = next(model.parameters()).device
    pad_token_id = next(i for i in (config.pad_token_id, *config.eos_ids, 0) if i is not None)
    prompts, prompt_attention = left_pad(prompt_ids, attention_mask, pad_token_id, device)
    batch_size, generation_start = prompts.shape
    generation_end = generation_start + config.gen_length
    if config.shift and (prompt_attention.sum(-1) == 0).any():
        raise ValueError("a shift model predicts each token from the one before it: every prompt needs a token.")
    prompt_lengths = prompt_attention.sum(-1)
    padding = generation_start - prompt_lengths
    starts = padding + prompt_lengths // block_size * block_size  # column of each row's first block
    last_position = -(-(prompt_lengths + config.gen_length) // block_size) * block_size  # whole blocks
    limit = context_length(model)
    if limit is not None and int(last_position.max()) > limit:
        raise ValueError(
            f"prompt ({int(prompt_lengths.max())} tokens) + gen_length ({config.gen_length}) in whole blocks of "
            f"{block_size} needs {int(last_position.max())} positions; the model has {limit}. Shorten them."
        )
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    width = int((padding + last_position).max())
    x = torch.cat(
        [
            prompts,
            torch.full((batch_size, width - generation_start), config.mask_token_id, dtype=torch.long, device=device),
        ],
        dim=1,
    )
    attention = torch.cat([prompt_attention, torch.ones_like(x[:, generation_start:])], dim=1)
    columns = torch.arange(width, device=device)
    generated = (columns >= generation_start) & (columns < generation_end)  # the positions sampled
    denoise = _BlockDenoiser(model, config, block_size, attention, padded_position_ids(attention), use_cache)
    row_nfe = torch.full((batch_size,), int(denoise.prefill(x, starts, prompt_lengths)), device=device)

    sub_blocks = block_size // config.block_length
    first_block = starts.clone()
    sub_block = torch.zeros(batch_size, dtype=torch.long, device=device)  # index inside the current block
    sub_step = torch.zeros_like(sub_block)  # steps taken in it
    open_at_start = torch.zeros_like(sub_block)  # positions to fill when the sub-block began
    active = torch.ones(batch_size, dtype=torch.bool, device=device)
    eos_ids = torch.tensor(config.eos_ids, dtype=torch.long, device=device)
    frames = [] if trace else None
    step = 0

    def open_positions(row: int) -> torch.Tensor:
        """Bool [T]: row's positions in its current sub-block still to be filled."""
        low = int(starts[row]) + int(sub_block[row]) * config.block_length
        inside = (columns >= low) & (columns < low + config.block_length)
        return inside & generated & (x[row] == config.mask_token_id)

    def settle(row: int) -> bool:
        """Move `row` past its filled sub-blocks and blocks (it leaves the batch when done); whether it entered a new
        block, so that the finished one must be cached first."""
        needs_append = False
        while active[row]:
            remaining = int(open_positions(row).sum())
            if remaining:
                if sub_step[row] == 0:
                    open_at_start[row] = remaining
                return needs_append
            sub_block[row] += 1
            sub_step[row] = 0
            if sub_block[row] < sub_blocks:
                continue
            block_columns = (columns >= starts[row]) & (columns < starts[row] + block_size)
            stopped = config.eos_handling == "stop" and torch.isin(x[row, block_columns & generated], eos_ids).any()
            if stopped:
                x[row] = torch.where((columns >= starts[row] + block_size) & generated, config.eos_ids[0], x[row])
            if stopped or starts[row] + block_size >= generation_end:
                active[row] = False
                return False
            starts[row] += block_size
            sub_block[row] = 0
            needs_append = True
        return False

    while True:
        pending = [row for row in range(batch_size) if active[row] and settle(row)]
        if pending:
            pending = torch.tensor(pending, device=device)
            denoise.append(x, pending, starts[pending])
            row_nfe[pending] += int(use_cache)
        if not active.any():
            break
        rows = active.nonzero().squeeze(1)
        logits = denoise(x, rows, starts[rows])
        row_nfe[rows] += 1
        positions = starts[rows].unsqueeze(1) + torch.arange(block_size, device=device)
        window = x[rows.unsqueeze(1), positions]
        candidates = torch.stack([open_positions(int(row))[positions[i]] for i, row in enumerate(rows)])
        tokens, confidence = predict_tokens(logits, config, generator)
        if config.threshold is None:
            schedule = num_transfer_tokens(open_at_start[rows], config.steps_per_block)
            counts = schedule.gather(1, sub_step[rows].unsqueeze(1)).squeeze(1).clamp(min=1)
        else:  # Fast-dLLM: everything confident enough, at least the best one
            counts = ((confidence >= config.threshold) & candidates).sum(-1).clamp(min=1)
        commit = select_most_confident(confidence, candidates, counts)
        x[rows.unsqueeze(1), positions] = torch.where(commit, tokens, window)
        if trace or on_step is not None:
            blocks = torch.where(active, (starts - first_block) // block_size, -1).tolist()
            frame = step_frame(step, blocks, x, rows, positions, commit, confidence, attention, generation_start)
            frame = replace(
                frame,
                sequences=frame.sequences[:, :generation_end],
                committed=frame.committed[:, :generation_end],
                confidence=frame.confidence[:, :generation_end],
                attention_mask=frame.attention_mask[:, :generation_end],
            )
            if trace:
                frames.append(frame)
            if on_step is not None:
                on_step(frame)
        step += 1
        sub_step[rows] += 1

    return GenerationResult(
        x[:, :generation_end],
        attention[:, :generation_end],
        generation_start,
        denoise.forwards,
        frames,
        row_nfe.tolist(),
    )
