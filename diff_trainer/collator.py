"""The masked-diffusion data collator: stacks fixed-length rows and applies the forward (noising) process."""

from dataclasses import dataclass
from typing import Optional

import torch
from transformers import default_data_collator

from .data.labels import IGNORE_INDEX
from .diffusion.forward import mask_tokens, replace_prompt_with_mask, sample_times, truncate_random_length
from .diffusion.schedules import NoiseSchedule


@dataclass
class DiffusionCollator:
    """Turns clean rows into a noised batch for `DiffusionTrainer`.

    Output keys: `input_ids` (noised), `attention_mask`, `labels` (the clean id at masked positions, -100
    elsewhere: the prediction targets), `maskable` (label != -100: positions that may be masked) and
    `loss_weight` (per row, the schedule's weight at its time t). Positions with label -100 are never masked.
    With `seed` set, the masks come from a private generator that `reseed()` restarts (evaluation).
    """

    mask_token_id: int
    schedule: NoiseSchedule
    antithetic_time: bool = True
    random_length_prob: float = 0.0
    prompt_dropout: float = 0.0
    seed: Optional[int] = None

    def __post_init__(self):
        self.generator = None
        self.reseed()

    def reseed(self) -> None:
        """Restart the private generator (no-op without a seed: the global torch RNG is used)."""
        if self.seed is not None:
            self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, features) -> dict:
        batch = default_data_collator(features)
        clean, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
        if self.random_length_prob > 0:
            labels, attention = truncate_random_length(labels, attention, self.random_length_prob, self.generator)
        maskable = labels != IGNORE_INDEX
        times = sample_times(len(clean), antithetic=self.antithetic_time, generator=self.generator)
        noisy, masked = mask_tokens(clean, maskable, self.schedule.mask_prob(times), self.mask_token_id,
                                    self.generator)
        if self.prompt_dropout > 0:
            prompt = ~maskable & attention.bool()
            noisy, _ = replace_prompt_with_mask(noisy, prompt, self.mask_token_id, self.prompt_dropout,
                                                self.generator)
        return {
            "input_ids": noisy,
            "attention_mask": attention,
            "labels": torch.where(masked, clean, torch.full_like(clean, IGNORE_INDEX)),
            "maskable": maskable,
            "loss_weight": self.schedule.loss_weight(times),
        }
