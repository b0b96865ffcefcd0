"""The forward (noising) process applied to a batch of clean rows, with one seeded generator per batch.

Data loaders yield clean rows; `DiffusionTrainer` noises each micro-batch with a generator seeded by (run seed,
global step, micro-batch index, process index), so a resumed run, gradient accumulation and DDP draw exactly the
masks and times of an uninterrupted single-process run.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .data.labels import IGNORE_INDEX
from .diffusion.forward import mask_tokens, replace_prompt_with_mask, sample_times, truncate_random_length
from .diffusion.schedules import NoiseSchedule


def mixed_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (e.g. run seed, step, micro-batch, process)."""
    state = np.random.SeedSequence([int(part) for part in parts]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by `mixed_seed(*parts)` (draws are moved to the batch's device)."""
    return torch.Generator().manual_seed(mixed_seed(*parts))


@dataclass(frozen=True)
class BatchNoiser:
    """Turns a batch of clean rows (`input_ids`, `labels`, `attention_mask`) into a noised training batch.

    Output keys: `input_ids` (noised), `attention_mask`, `clean_ids` (the rows as given), `maskable` (label !=
    -100: positions that may be masked; the prompt and ignored padding never are), `masked` (positions replaced
    by the mask) and `loss_weight` (per row, the schedule's weight at its time t).
    """

    mask_token_id: int
    schedule: NoiseSchedule
    antithetic_time: bool = True
    random_length_prob: float = 0.0
    prompt_dropout: float = 0.0

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        clean, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
        if self.random_length_prob > 0:
            labels, attention = truncate_random_length(labels, attention, self.random_length_prob, generator)
        maskable = labels != IGNORE_INDEX
        times = sample_times(len(clean), antithetic=self.antithetic_time, generator=generator, device=clean.device)
        noisy, masked = mask_tokens(clean, maskable, self.schedule.mask_prob(times), self.mask_token_id, generator)
        if self.prompt_dropout > 0:
            prompt = ~maskable & attention.bool()
            noisy, _ = replace_prompt_with_mask(noisy, prompt, self.mask_token_id, self.prompt_dropout, generator)
        return {"input_ids": noisy, "attention_mask": attention, "clean_ids": clean, "maskable": maskable,
                "masked": masked, "loss_weight": self.schedule.loss_weight(times)}
