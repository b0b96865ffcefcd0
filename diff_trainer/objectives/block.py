"""Block diffusion (BD3-LM) as a training objective: autoregressive over blocks of `block_size` tokens, masked
diffusion inside a block (`diffusion/block.py` holds the maths, `sampling/block.py` the sampler).

`--diffusion_objective block --diffusion_block_size L'` trains with one forward pass over [x_t ; x0] per batch; the
checkpoint records the objective and L' in `diffusion_config`, so every command samples it with the block sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.labels import IGNORE_INDEX
from ..data.loading import DataError
from ..diffusion.attention import additive_mask
from ..diffusion.block import (
    block_attention_allowed,
    block_diffusion_loss,
    block_token_losses,
    check_block_size,
    noise_blocks,
    predictor_positions,
    vectorised_inputs,
)
from ..diffusion.elbo import monte_carlo_copies
from ..diffusion.masked_head import unwrapped_model
from ..diffusion.schedules import NoiseSchedule, get_schedule
from ..diffusion_config import read_diffusion_config, write_diffusion_config
from ..models.bidirectional import is_encoder_model, make_bidirectional
from .base import Objective

BLOCK = "block"


def check_rows_fit_blocks(layout, block_size: int) -> None:
    """DataError for rows (`data.pipeline.RowLayout`) that L' does not divide, and for left padding (blocks are
    aligned to positions from a row's first column in training, from its first token in the sampler)."""
    try:
        check_block_size(layout.block_size, block_size)
    except ValueError as error:
        raise DataError(str(error)) from None
    if layout.packing == "left":
        raise DataError(
            "--diffusion_objective block aligns blocks to the row's first token: use --padding_side "
            "right (or --concatenate_texts), not left padding."
        )


@dataclass(frozen=True)
class BlockNoiser:
    """Clean rows -> a noised block-diffusion batch: the keys of `BatchNoiser`'s output with `loss_weight` per block
    [B, num_blocks]; with `complementary`, 2B rows (each row again with the complement of its mask)."""

    mask_token_id: int
    schedule: NoiseSchedule
    block_size: int
    antithetic_time: bool = True
    complementary: bool = False

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        drawn = noise_blocks(
            batch["input_ids"],
            batch["labels"],
            self.schedule,
            self.block_size,
            self.mask_token_id,
            antithetic=self.antithetic_time,
            complementary=self.complementary,
            generator=generator,
        )
        attention = batch["attention_mask"].repeat(2, 1) if self.complementary else batch["attention_mask"]
        return {
            "input_ids": drawn["noisy_ids"],
            "attention_mask": attention,
            "clean_ids": drawn["clean_ids"],
            "maskable": drawn["maskable"],
            "masked": drawn["masked"],
            "loss_weight": drawn["loss_weight"],
        }


@dataclass(frozen=True)
class BlockMasks:
    """The block-diffusion noise of a sequence's VRPO copies (the form of `data.preference.CountMasks`).

    The sequence (prompt + response) is cut into blocks of L' from its first token, as training and the sampler cut
    it (the last block filled); each copy draws one time per block, stratified over the n·blocks times of the
    sequence (`diffusion.block.noise_blocks`, as the block NELBO bound draws them), and the response's tokens of
    block b are masked with probability 1 − α(t_b). Returns `noisy_ids`, `masked` and `mask_weights` [n, P + R],
    the last the weight w(t_b) of each token's block."""

    mask_token_id: int
    schedule: NoiseSchedule
    block_size: int

    def __call__(self, prompt, response, num_samples: int, generator) -> dict:
        length = len(prompt) + len(response)
        sequence = F.pad(torch.cat([prompt, response]), (0, -length % self.block_size), value=self.mask_token_id)
        ids = sequence.expand(num_samples, -1)
        labels = ids.clone()
        labels[:, : len(prompt)] = labels[:, length:] = IGNORE_INDEX  # the prompt and the filling are never masked
        drawn = noise_blocks(ids, labels, self.schedule, self.block_size, self.mask_token_id, generator=generator)
        weights = drawn["loss_weight"].repeat_interleave(self.block_size, dim=1)
        return {
            "noisy_ids": drawn["noisy_ids"][:, :length],
            "masked": drawn["masked"][:, :length],
            "mask_weights": weights[:, :length],
        }


class BlockDiffusion(Objective):
    """Block diffusion: per-block times, the noisy block attends to itself and the clean blocks before it."""

    names = (BLOCK,)
    title = "block diffusion"
    sampler = "block"
    scores_preferences = True

    def __init__(
        self,
        mask_token_id: int,
        shift: bool,
        block_size: int,
        schedule: NoiseSchedule,
        train_noiser: BlockNoiser,
        eval_noiser: BlockNoiser,
    ):
        self.mask_token_id, self.shift, self.block_size, self.schedule = mask_token_id, shift, block_size, schedule
        self.train_noiser, self.eval_noiser = train_noiser, eval_noiser

    @classmethod
    def flags_in_use(cls, args) -> dict[str, bool]:
        return {
            "diffusion_block_size": args.diffusion_block_size is not None,
            "complementary_masks": args.complementary_masks,
            "shift_logits": args.shift_logits,
            "noise_schedule": args.noise_schedule != "linear",
            "isolate_documents": args.isolate_documents,
        }

    @classmethod
    def check_arguments(cls, args) -> None:
        if args.diffusion_block_size is not None and args.diffusion_block_size < 1:
            raise ValueError(f"--diffusion_block_size must be at least 1, got {args.diffusion_block_size}.")
        if args.diffusion_objective != BLOCK:
            return
        if args.diffusion_block_size is None:
            raise ValueError("--diffusion_objective block needs --diffusion_block_size (a divisor of --block_size).")
        if args.complementary_masks and args.noise_schedule != "linear":
            raise ValueError(
                "--complementary_masks weights each complement by the linear schedule's 1/(1 - p): "
                "use --noise_schedule linear."
            )

    @classmethod
    def settings(cls, args, name: str) -> dict:
        return {
            "objective": BLOCK,
            "block_size": args.diffusion_block_size,
            "shift_logits": args.shift_logits,
            "noise_schedule": args.noise_schedule,
            "time_eps": args.time_eps,
        }

    @classmethod
    def prepare_model(cls, model, tokenizer, settings: dict, *, masked_lm: bool, auto_class: str):
        """Attention from the 4-D block mask alone, and the objective, L', mask id and shift in `diffusion_config`."""
        if masked_lm or is_encoder_model(model):
            raise ValueError("--diffusion_objective block trains a decoder (its blocks are causal): drop --masked_lm.")
        make_bidirectional(model)
        recorded = {name: value for name, value in settings.items() if name not in ("objective", "block_size")}
        write_diffusion_config(model.config, mask_token_id=tokenizer.mask_token_id, auto_class=auto_class, **recorded)
        model.config.diffusion_config.update(objective=BLOCK, block_size=int(settings["block_size"]))
        return model

    @classmethod
    def from_model(cls, model, args=None, prefix_shuffler=None) -> BlockDiffusion:
        """The checkpoint's L', mask id, shift and schedule; `args` adds --antithetic_time and --complementary_masks."""
        recorded = read_diffusion_config(unwrapped_model(model).config)
        mask_token_id, block_size = recorded["mask_token_id"], recorded["block_size"]
        schedule = get_schedule(recorded.get("noise_schedule", "linear"), recorded.get("time_eps", 1e-3))
        antithetic = True if args is None else args.antithetic_time
        complementary = False if args is None else args.complementary_masks
        return cls(
            mask_token_id,
            bool(recorded.get("shift_logits", False)),
            block_size,
            schedule,
            BlockNoiser(mask_token_id, schedule, block_size, antithetic, complementary),
            BlockNoiser(mask_token_id, schedule, block_size, antithetic),
        )

    def forward(self, model, noisy_ids, clean_ids, attention=None) -> torch.Tensor:
        """The logits [B, 2L, V] of one forward pass over [x_t ; x0] under the block mask. `attention`: the [B, L]
        padding mask, or a 4-D mask [B, 1, L, L] (float additive or bool: the trainer's --isolate_documents mask),
        which restricts both copies alike (token i, noisy or clean, sees token j only where it allows i -> j)."""
        length = clean_ids.shape[1]
        if attention is not None and not isinstance(attention, torch.Tensor):
            raise ValueError(
                "block diffusion builds its own 4-D float mask: load the model with --attn_implementation sdpa "
                "(or eager), not flex_attention, with --isolate_documents."
            )
        ids, positions = vectorised_inputs(noisy_ids, clean_ids)
        padding = attention if attention is None or attention.dim() == 2 else None
        allowed = block_attention_allowed(length, self.block_size, attention_mask=padding, device=clean_ids.device)
        if padding is None and attention is not None:
            restriction = attention if attention.dtype == torch.bool else attention == 0
            allowed = allowed & restriction.repeat(1, 1, 2, 2)
        mask = additive_mask(allowed, next(model.parameters()).dtype)
        return model(input_ids=ids, position_ids=positions, attention_mask=mask).logits

    def loss(
        self, model, inputs: dict, normalization: str, total_denominator=None, attention=None, with_logits: bool = False
    ):
        """`with_logits`: the logits at each position as a plain (shift: next-token) model's would be, [B, L, V]."""
        attention = inputs["attention_mask"] if attention is None else attention
        clean, masked = inputs["clean_ids"], inputs["masked"]
        logits = self.forward(model, inputs["input_ids"], clean, attention)
        loss = block_diffusion_loss(
            logits,
            clean,
            masked,
            inputs["maskable"],
            inputs["loss_weight"],
            self.block_size,
            normalization,
            shift=self.shift,
            total_denominator=total_denominator,
        )
        if not with_logits:
            return loss, None
        source = predictor_positions(clean.shape[1], self.block_size, self.shift, device=clean.device)
        return loss, logits[:, source.roll(-1) if self.shift else source]  # shift: position i predicts i + 1

    def whole_blocks(self, ids, padding=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`ids` [B, L] and their padding mask filled on the right to whole blocks (mask ids, never attended)."""
        extra = -ids.shape[1] % self.block_size
        if not extra:
            return ids, padding
        padding = torch.ones_like(ids) if padding is None else padding
        return F.pad(ids, (0, extra), value=self.mask_token_id), F.pad(padding, (0, extra), value=0)

    @torch.no_grad()
    def elbo_nll(
        self,
        model,
        input_ids,
        attention_mask,
        maskable,
        num_samples: int,
        generator,
        *,
        attention_for=None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """The block NELBO Σ_b E_t_b[w(t_b) Σ_{masked in b} −log p]: stratified t per block over the copies; rows
        are filled to whole blocks (the filling is neither scored nor attended)."""
        input_ids, attention_mask = self.whole_blocks(input_ids, attention_mask)
        maskable = F.pad(maskable, (0, input_ids.shape[1] - maskable.shape[1]), value=False)
        num_blocks = check_block_size(input_ids.shape[1], self.block_size)
        ids = monte_carlo_copies(input_ids, num_samples)
        labels = ids.masked_fill(~monte_carlo_copies(maskable, num_samples), IGNORE_INDEX)
        padding = self.copies_attention(input_ids, attention_mask, num_samples, attention_for)
        drawn = noise_blocks(ids, labels, self.schedule, self.block_size, self.mask_token_id, generator=generator)
        size = chunk_size or len(ids)
        terms = []
        for start in range(0, len(ids), size):
            rows = slice(start, start + size)
            copies = None if padding is None else padding[rows]
            logits = self.forward(model, drawn["noisy_ids"][rows], ids[rows], copies)
            losses = block_token_losses(logits, ids[rows], drawn["masked"][rows], self.block_size, shift=self.shift)
            per_block = losses.reshape(len(losses), num_blocks, self.block_size).sum(-1)
            terms.append((per_block * drawn["loss_weight"][rows]).sum(-1))
        return torch.cat(terms).reshape(input_ids.shape[0], num_samples).mean(dim=1)

    def preference_noise(self) -> BlockMasks:
        return BlockMasks(self.mask_token_id, self.schedule, self.block_size)

    def preference_terms(self, model, inputs: dict, num_samples: int, *, prefix: str = "", head=None) -> torch.Tensor:
        """−Σ_b w(t_b) Σ_{masked i ∈ b} CE_i per copy (one term of the block NELBO, negated), from one forward over
        [x_t ; x0] of each copy; rows are filled to whole blocks, the filling neither seen nor scored. Full logits:
        `head` must be None."""
        clean, padding = self.whole_blocks(
            monte_carlo_copies(inputs["input_ids"], num_samples),
            monte_carlo_copies(inputs["attention_mask"], num_samples),
        )
        extra = clean.shape[1] - inputs["input_ids"].shape[1]
        noisy = F.pad(inputs[f"{prefix}noisy_ids"], (0, extra), value=self.mask_token_id)
        masked = F.pad(inputs[f"{prefix}masked"], (0, extra), value=False)
        weights = F.pad(inputs[f"{prefix}mask_weights"], (0, extra), value=0.0)
        logits = self.forward(model, noisy, clean, padding)
        losses = block_token_losses(logits, clean, masked, self.block_size, shift=self.shift)
        return -(losses * weights).sum(dim=1).reshape(-1, num_samples)  # BD3-LM L_BD, one draw per copy

    @torch.no_grad()
    def greedy(self, model, context_ids: list[int], continuation_ids: list[int]) -> bool:
        """Every block of the continuation, fully masked after its clean prefix, is predicted exactly (argmax)."""
        device = next(model.parameters()).device
        clean, padding = self.whole_blocks(torch.tensor([context_ids + continuation_ids], device=device))
        noisy = clean.clone()
        noisy[0, len(context_ids) :] = self.mask_token_id
        logits = self.forward(model, noisy, clean, padding)
        source = predictor_positions(clean.shape[1], self.block_size, self.shift, device=device)
        predicted = logits[0, source].argmax(-1)
        return predicted[len(context_ids) : len(context_ids) + len(continuation_ids)].tolist() == continuation_ids
