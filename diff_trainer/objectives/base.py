"""The interface every training objective of a diffusion LM implements (after SEDD's `graph_lib.Graph`).

An objective prepares a model for training and writes what its checkpoints record (`diffusion_config`); noises a
batch of clean rows with a given generator; computes the loss numerator / denominator with the project's
normalisations; bounds −log p of the trainable tokens (the evaluation ELBO, the harness's scores); and names the
sampler its checkpoints are sampled with by default. `objectives.objective_for` finds the class of a checkpoint.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import torch

from ..diffusion.elbo import monte_carlo_copies
from ..diffusion.losses import denominator


class Objective(abc.ABC):
    """One objective; an instance holds the settings of one model (`from_model`)."""

    names: ClassVar[tuple[str, ...]]  # what a checkpoint records as diffusion_config["objective"]
    title: ClassVar[str]  # how messages name it
    sampler: ClassVar[str]  # the sampler of its checkpoints by default: "masked" or "sedd" (see sampling.settings)
    scores_preferences: ClassVar[bool] = False  # it defines preference_noise / preference_terms (VRPO / DPO)
    preference_head: ClassVar[bool] = False  # its preference_terms can project the masked positions only (MaskedHead)
    train_noiser: Callable[[dict, torch.Generator], dict]
    eval_noiser: Callable[[dict, torch.Generator], dict]
    masked_head = None  # the LM head applied only at masked positions, when the objective uses one

    @classmethod
    @abc.abstractmethod
    def flags_in_use(cls, args) -> dict[str, bool]:
        """Whether each training flag that belongs to this objective alone is in use (flag name -> bool)."""

    @classmethod
    @abc.abstractmethod
    def check_arguments(cls, args, name: str) -> None:
        """Refuse training flags that do not apply to this objective (`name` as given on the command line)."""

    @classmethod
    @abc.abstractmethod
    def settings(cls, args, name: str) -> dict:
        """What `prepare_model` records from the training arguments (DiffusionTrainingArguments); with the
        objective's name under "objective" unless it is the default one."""

    @classmethod
    @abc.abstractmethod
    def prepare_model(cls, model, tokenizer, settings: dict, *, masked_lm: bool, auto_class: str):
        """The model to train with this objective, its `diffusion_config` written from `settings`."""

    @classmethod
    @abc.abstractmethod
    def from_model(cls, model, args=None, prefix_shuffler=None) -> Objective:
        """The objective of a prepared model or checkpoint; `args` (DiffusionTrainingArguments) adds the training
        settings, without them it is set up for evaluation."""

    @abc.abstractmethod
    def loss(
        self, model, inputs: dict, normalization: str, total_denominator=None, attention=None, with_logits: bool = False
    ):
        """(loss numerator / denominator, logits or None) of a noised batch; `attention`: the mask to run the model
        with (default: the batch's padding mask); `with_logits`: return every position's logits."""

    def denominator(self, normalization: str, batch: dict) -> torch.Tensor:
        """What one noised batch adds to the loss denominator of its optimizer step."""
        return denominator(normalization, batch["maskable"], batch["masked"])

    @abc.abstractmethod
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
        """A Monte-Carlo upper bound on −log p(maskable tokens | the rest) per row, in nats.

        `attention_mask`: the rows' padding mask, or None (the model runs without one); `attention_for(mask, ids)`
        turns the mask of the `num_samples` copies of each row into the one the model runs with (the trainer's
        annealing and document isolation); `chunk_size`: at most this many copies per forward pass."""

    @staticmethod
    def copies_attention(input_ids, attention_mask, num_samples: int, attention_for=None):
        """The attention mask of the Monte-Carlo copies (row k·n + j is sample j of row k), or None."""
        if attention_mask is None:
            return None
        copies = monte_carlo_copies(attention_mask, num_samples)
        return copies if attention_for is None else attention_for(copies, monte_carlo_copies(input_ids, num_samples))

    def preference_noise(self) -> Callable:
        """The noise of its VRPO scores: noise(prompt [P], response [R], n, generator) -> the n noisy copies of the
        sequence (`noisy_ids`, `masked` [n, P + R]) and what scoring them needs (`data.preference.CountMasks`)."""
        raise ValueError(f"VRPO / DPO scores are not defined for {self.title} checkpoints.")

    def preference_terms(self, model, inputs: dict, num_samples: int, *, prefix: str = "", head=None) -> torch.Tensor:
        """The n ELBO terms (log-likelihood lower bounds, nats) of every sequence of a `PreferenceCollator` batch
        drawn with `preference_noise`: Tensor[2B, n]. `prefix` "ref_": the reference's own masks; `head`: the
        model's MaskedHead (only where `preference_head`), or None for full logits."""
        raise ValueError(f"VRPO / DPO scores are not defined for {self.title} checkpoints.")

    @abc.abstractmethod
    def greedy(self, model, context_ids: list[int], continuation_ids: list[int]) -> bool:
        """Whether the model's single most likely reading of the continuation after `context_ids` is exactly it."""
