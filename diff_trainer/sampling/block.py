"""The block-diffusion sampler (BD3-LM): blocks left to right, masked diffusion inside a block, an exact KV cache.

Blocks are aligned to positions as in training: block b holds positions [bL', (b+1)L') of a row, so the first block
a row generates may start inside its prompt (the prompt's tail is fed with it, unmasked, as training fed it in the
noisy block). Inside a block the masked sampler's strategies run over the block only (`sampling/masked.py`: low
confidence and the other confidences, threshold decoding, temperature with Gumbel noise, EOS handling); the block is
filled in sub-blocks of `block_length` tokens, `steps_per_block` steps each (LLaDA's semi-autoregressive schedule).

The cache is exact: clean blocks never attend to later ones, so the keys and values of a finished block, computed
once with the block clean over the cache, are what every later forward would compute. They are computed in the same
forward as the first denoising step of the next block (the prompt's whole blocks in the first step's; shift models
also take from it the logits that predict the next block's first token), so each step is one forward of at most two
blocks over the cache, which is kept across steps and cropped. With `use_cache=False` every step instead runs the
whole prefix with the block-causal mask (the reference the cache must equal token for token).

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
    """Logits predicting the current block of each active row, over a key/value cache kept from step to step.

    Rows share the left-padded column layout. The cache holds the keys/values of columns [0, C) of the rows still in
    the batch, C at most every row's current block start, so what it holds is clean and final. A step feeds columns
    [C, E), E the end of the furthest current block, under the block-causal mask: for each row the blocks it finished
    since the last step (at the first step, the prompt's whole blocks) ride along with its current block, so their
    keys/values come out of the step's own forward (Fast-dLLM v2). The cache is then cropped to the smallest current
    block start. `carry` [B, V] holds, for shift models, the logits of the clean token before each row's current
    block. Without the cache, C stays 0: every step runs the whole prefix (the reference the cache must equal).
    """

    def __init__(self, model, config: SamplerConfig, block_size: int, attention_mask, position_ids, use_cache):
        self.model, self.config, self.block_size = model, config, block_size
        self.attention_mask, self.position_ids = attention_mask, position_ids
        self.use_cache = use_cache
        self.padded = bool((attention_mask == 0).any())  # without padding every key of the window's blocks is seen
        self.dtype = next(model.parameters()).dtype
        self.cache_keyword = cache_keyword_of(model)
        self.forwards = 0
        self.cache, self.cached = DynamicCache(), 0
        self.rows = torch.arange(attention_mask.shape[0], device=attention_mask.device)  # the rows the cache holds
        self.carry: torch.Tensor | None = None

    def _select(self, rows) -> None:
        """Drop the cached keys/values of the rows that left the batch."""
        if len(rows) < len(self.rows):
            self.cache.batch_select_indices(torch.isin(self.rows, rows).nonzero().squeeze(1))
            self.rows = rows

    def __call__(self, x, rows, starts: list[int]) -> torch.Tensor:
        """Logits [len(rows), L', V] (the model's dtype) predicting the blocks starting at columns `starts` of
        `rows`. When every row is at the same column (batch 1 always), the block is a slice of the window."""
        self._select(rows)
        low, high = self.cached, max(starts) + self.block_size
        padding = self.attention_mask[rows, :high] if self.padded else None
        allowed = block_causal_allowed(self.position_ids[rows, :high], self.block_size, padding, first_query=low)
        self.forwards += 1
        output = self.model(
            input_ids=x[rows, low:high],
            position_ids=self.position_ids[rows, low:high],
            attention_mask=additive_mask(allowed, self.dtype),
            **({self.cache_keyword: self.cache, "use_cache": True} if self.use_cache else {"use_cache": False}),
        )
        window = output.logits
        uniform = min(starts) == max(starts)
        if uniform:
            logits = window[:, starts[0] - low : starts[0] - low + self.block_size]
        else:
            index = torch.tensor([[start - low + offset for offset in range(self.block_size)] for start in starts])
            logits = window[torch.arange(len(rows), device=x.device).unsqueeze(1), index.to(x.device)]
        if self.config.shift:  # the logits at i - 1 predict token i; the block's first token from the position before
            if self.carry is None:
                self.carry = window.new_zeros((self.attention_mask.shape[0], window.shape[-1]))
            # where the clean token before the block was in this window, (re)compute its carry
            if uniform and max(starts[0] - 1, 0) >= low:
                self.carry[rows] = window[:, max(starts[0] - 1, 0) - low]
            elif not uniform:
                fed = [(i, max(start - 1, 0) - low) for i, start in enumerate(starts) if max(start - 1, 0) >= low]
                if fed:
                    fed_rows, fed_columns = torch.tensor(fed, device=x.device).T
                    self.carry[rows[fed_rows]] = window[fed_rows, fed_columns]
            logits = torch.cat([self.carry[rows].unsqueeze(1), logits[:, :-1]], dim=1)
        if self.use_cache:
            self.cached = min(starts)
            if self.cached:
                self.cache.crop(self.cached - high)
            else:
                self.cache = DynamicCache()
        return logits


def generate(model, prompt_ids, config: SamplerConfig | None = None, **options) -> GenerationResult:
    """Sample `gen_length` tokens after each prompt with a block-diffusion `model` (`_sample`'s arguments), under
    torch.inference_mode; the sequences come back as ordinary tensors (they may be changed in place)."""
    with torch.inference_mode():
        result = _sample(model, prompt_ids, config, **options)
    return replace(result, sequences=result.sequences.clone(), attention_mask=result.attention_mask.clone())


def _sample(
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
    counts the forwards: one per step (the prompt and the finished blocks ride along with a step).
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
    generated = torch.zeros(width, dtype=torch.bool, device=device)
    generated[generation_start:generation_end] = True  # the positions sampled
    denoise = _BlockDenoiser(model, config, block_size, attention, padded_position_ids(attention), use_cache)

    # Per-row state as Python numbers (a tensor op per row and step costs more than a small model's forward); at
    # batch 1 (every row at one column) the current blocks are slices of x, not gathers
    starts, first_block = starts.tolist(), starts.tolist()  # column of each row's current (first) block
    sub_blocks = block_size // config.block_length
    sub_block = [0] * batch_size  # index inside the current block
    sub_step = [0] * batch_size  # steps taken in it
    open_at_start = [0] * batch_size  # positions to fill when the sub-block began
    active = [True] * batch_size
    row_nfe = [0] * batch_size
    eos_ids = torch.tensor(config.eos_ids, dtype=torch.long, device=device)
    offsets = torch.arange(block_size, device=device)
    frames = [] if trace else None
    step = 0

    def open_count(row: int) -> int:
        """How many of row's positions in its current sub-block are still to be filled."""
        low = starts[row] + sub_block[row] * config.block_length
        low, high = max(low, generation_start), min(low + config.block_length, generation_end)
        return int((x[row, low:high] == config.mask_token_id).sum()) if high > low else 0

    def settle(row: int) -> None:
        """Move `row` past its filled sub-blocks and blocks; it leaves the batch when done."""
        while active[row]:
            remaining = open_count(row)
            if remaining:
                if sub_step[row] == 0:
                    open_at_start[row] = remaining
                return
            sub_block[row] += 1
            sub_step[row] = 0
            if sub_block[row] < sub_blocks:
                continue
            end = starts[row] + block_size
            block = x[row, max(starts[row], generation_start) : min(end, generation_end)]  # its generated positions
            stopped = config.eos_handling == "stop" and bool(torch.isin(block, eos_ids).any())
            if stopped:
                x[row, end:generation_end] = config.eos_ids[0]
            if stopped or end >= generation_end:
                active[row] = False
                return
            starts[row] = end
            sub_block[row] = 0

    working, rows = [], None
    while True:
        for row in range(batch_size):
            settle(row)
        if working != [row for row in range(batch_size) if active[row]]:
            working = [row for row in range(batch_size) if active[row]]
            rows = torch.tensor(working, device=device)
        if not working:
            break
        row_starts = [starts[row] for row in working]
        logits = denoise(x, rows, row_starts)
        for row in working:
            row_nfe[row] += 1
        if min(row_starts) == max(row_starts):
            block = slice(row_starts[0], row_starts[0] + block_size)
            window, fillable = x[rows, block], generated[block]
        else:
            block = torch.tensor(row_starts, device=device).unsqueeze(1) + offsets
            window, fillable = x[rows.unsqueeze(1), block], generated[block]
        candidates = fillable & (window == config.mask_token_id)  # the sub-block's open positions
        if sub_blocks > 1:
            sub_block_low = torch.tensor([sub_block[row] * config.block_length for row in working], device=device)
            low = sub_block_low.unsqueeze(1)
            candidates = candidates & (offsets >= low) & (offsets < low + config.block_length)
        tokens, confidence = predict_tokens(logits, config, generator)
        if config.threshold is None:
            opened = torch.tensor([open_at_start[row] for row in working], device=device)
            taken = torch.tensor([sub_step[row] for row in working], device=device)
            schedule = num_transfer_tokens(opened, config.steps_per_block)
            counts = schedule.gather(1, taken.unsqueeze(1)).squeeze(1).clamp(min=1)
        else:  # Fast-dLLM: everything confident enough, at least the best one
            counts = ((confidence >= config.threshold) & candidates).sum(-1).clamp(min=1)
        commit = select_most_confident(confidence, candidates, counts)
        x[rows.unsqueeze(1) if isinstance(block, torch.Tensor) else rows, block] = torch.where(commit, tokens, window)
        if trace or on_step is not None:
            positions = torch.tensor(row_starts, device=device).unsqueeze(1) + offsets
            blocks = [(now - first) // block_size if on else -1 for now, first, on in zip(starts, first_block, active)]
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
        for row in working:
            sub_step[row] += 1

    return GenerationResult(
        x[:, :generation_end],
        attention[:, :generation_end],
        generation_start,
        denoise.forwards,
        frames,
        row_nfe,
    )
