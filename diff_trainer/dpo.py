"""DiffusionDPOTrainer: preference optimisation of masked-diffusion LMs with VRPO (LLaDA 1.5).

A diffusion LM has no exact log-likelihood, so DPO's log-ratios use ELBO scores. VRPO keeps their variance low:
  - budget n = --mc_samples per response: n masked-token counts l_j stratified over 1..L, one mask each;
  - antithetic sampling: policy and reference score exactly the same noisy copies, so with policy = reference
    every reward is exactly 0 and the noise in the difference cancels.

    B̂(y) = (1/n) Σ_j ℓ_j(y)                     ℓ_j = −(L/l_j) Σ_masked CE, one ELBO term (LLaDA eq. 14)
    reward(y) = β · (B̂θ(y) − B̂ref(y))
    loss = −log σ(reward(y_w) − reward(y_l)) + sft_weight · SFT loss on y_w

The reference is a frozen copy, the policy with its LoRA adapters disabled, or scores precomputed once.
"""

import contextlib
import copy
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from .data.preference import (
    REFERENCE_COLUMNS,
    TOKEN_COLUMNS,
    PreferenceCollator,
    fingerprint_mismatch,
    reference_fingerprint,
)
from .diffusion.elbo import elbo_terms
from .modeling import read_diffusion_config

logger = logging.getLogger(__name__)

REF_FINGERPRINT_COLUMN = "ref_fingerprint"
METRIC_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected")


@dataclass
class DPOArguments:
    """VRPO / diffusion DPO settings (LLaDA 1.5 used beta 0.2, sft_weight 0.05, mc_samples 8)."""

    beta: float = field(default=0.2, metadata={"help": "Inverse temperature of the DPO loss."})
    sft_weight: float = field(
        default=0.05, metadata={"help": "Weight of the masked-diffusion (SFT) loss on the chosen response; 0 = off."}
    )
    mc_samples: int = field(
        default=8, metadata={"help": "Monte-Carlo budget n per response: n stratified mask counts, one mask each."}
    )
    antithetic_sampling: bool = field(
        default=True,
        metadata={"help": "Policy and reference see the same masks (VRPO). false: independent masks (ablation)."},
    )
    ref_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Frozen reference checkpoint; default: the policy's starting point."}
    )
    precompute_ref_scores: bool = field(
        default=False,
        metadata={"help": "Score the pairs with the reference once before training, store the scores with the "
                          "dataset and keep no reference model. Masks are then the same in every epoch."},
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Turn dropout off in policy and reference (as TRL), so rewards start at 0."}
    )

    def __post_init__(self):
        if self.mc_samples < 1:
            raise ValueError(f"--mc_samples must be >= 1, got {self.mc_samples}")
        if self.beta <= 0:
            raise ValueError(f"--beta must be positive, got {self.beta}")
        if self.sft_weight < 0:
            raise ValueError(f"--sft_weight must be >= 0, got {self.sft_weight}")


def elbo_samples(logits_fn, inputs, num_samples: int, shift: bool = False, prefix: str = "") -> torch.Tensor:
    """The n ELBO terms of every sequence of a `PreferenceCollator` batch: Tensor[2B, n] (nats, higher = likelier).

    `prefix` "ref_" selects the reference's own masks when they are not shared.
    """
    clean = inputs["input_ids"].repeat_interleave(num_samples, dim=0)
    maskable = inputs["maskable"].repeat_interleave(num_samples, dim=0)
    terms = elbo_terms(logits_fn, clean, maskable, inputs[f"{prefix}noisy_ids"], inputs[f"{prefix}masked"],
                       inputs[f"{prefix}mask_counts"], shift)
    return terms.reshape(-1, num_samples)


def model_logits(model, attention_mask, num_samples: int):
    """logits_fn for `elbo_samples`: the model on noisy rows, each row's attention repeated for its n copies."""
    attention = attention_mask.repeat_interleave(num_samples, dim=0)
    return lambda noisy_ids: model(input_ids=noisy_ids, attention_mask=attention).logits


def preference_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Per-pair DPO losses and the implicit rewards β·(B̂θ − B̂ref) of chosen and rejected."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)  # DPO eq. 7 with ELBO scores (LLaDA 1.5 VRPO)
    return losses, chosen_rewards, rejected_rewards


def sft_losses(chosen_terms, chosen_lengths) -> torch.Tensor:
    """LLaDA's SFT loss per pair from the chosen response's ELBO terms: mean_j (L/l_j)·Σ CE / L = −mean_j ℓ_j / L.

    Masking exactly l tokens with weight L/l is the count form of masking with probability t and weight 1/t
    (LLaDA eq. 5, answer-length normalised).
    """
    return -(chosen_terms / chosen_lengths.clamp(min=1).unsqueeze(1)).mean(dim=1)


def disable_dropout(model) -> None:
    """Set every dropout probability of `model` to 0: nn.Dropout modules and attention modules' float rate."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


class MaskEpochCallback(TrainerCallback):
    """Tells the collator which epoch starts, so a pair's masks change from epoch to epoch.

    Data-loader workers copy the collator when an epoch's iterator starts, so they see the new epoch; persistent
    workers (--dataloader_persistent_workers) keep the first epoch's masks.
    """

    def __init__(self, collator: PreferenceCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = math.floor(state.epoch or 0)  # state.epoch is e + fraction done, e after epoch e-1


class DiffusionDPOTrainer(Trainer):
    """Trainer with the VRPO loss on `PreferenceCollator` batches (see the module docstring).

    Reference: `ref_model` (frozen); else for a peft `model` the model with adapters disabled; else a copy of `model`
    made here. With `dpo_args.precompute_ref_scores` the datasets get `ref_chosen_score`/`ref_rejected_score`
    columns before training and the reference is dropped. The loss is Σ per-pair losses / pairs of the whole
    optimizer step (all micro-batches and processes), so accumulation and DDP match one big batch.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, model, ref_model=None, args=None, dpo_args: Optional[DPOArguments] = None,
                 train_dataset=None, eval_dataset=None, processing_class=None, data_collator=None, **kwargs):
        self.dpo_args = dpo_args or DPOArguments()
        base = model.get_base_model() if is_peft_model(model) else model
        diffusion_config = read_diffusion_config(base.config)
        if diffusion_config is None:
            raise ValueError("The policy is not a masked-diffusion checkpoint (its config has no diffusion_config). "
                             "Train one with run_clm_diff.py --train_diff_model first.")
        self.shift_logits = bool(diffusion_config.get("shift_logits", False))
        reference = ref_model if ref_model is not None else base  # the policy's starting point
        self.ref_fingerprint = reference_fingerprint(reference.name_or_path, self.dpo_args.mc_samples,
                                                     self.dpo_args.antithetic_sampling, args.seed if args else 42)
        if args is not None:
            args.remove_unused_columns = False  # the collator needs prompt/response ids and mask seeds
        datasets = [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
        for dataset in datasets:
            if dataset is not None and not set(TOKEN_COLUMNS) <= set(getattr(dataset, "column_names", None) or []):
                raise ValueError(f"Datasets need the columns {TOKEN_COLUMNS}: tokenise the pairs with "
                                 "diff_trainer.data.preference.tokenize_pairs.")
        precomputed = self.dpo_args.precompute_ref_scores and all(
            self._has_reference_scores(dataset) for dataset in datasets if dataset is not None)
        if ref_model is None and not is_peft_model(model) and not precomputed:
            ref_model = copy.deepcopy(model)  # the policy's starting point
        if self.dpo_args.disable_dropout:
            disable_dropout(model)
            if ref_model is not None:
                disable_dropout(ref_model)
        if data_collator is None:
            pad_id = getattr(processing_class, "pad_token_id", None)
            data_collator = PreferenceCollator(
                diffusion_config["mask_token_id"], pad_id if pad_id is not None else base.config.eos_token_id,
                num_samples=self.dpo_args.mc_samples, antithetic=self.dpo_args.antithetic_sampling,
                fixed_epoch=0 if self.dpo_args.precompute_ref_scores else None)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        self.eval_collator = replace(data_collator, fixed_epoch=0)  # the same masks at every evaluation
        if data_collator.fixed_epoch is None:
            self.add_callback(MaskEpochCallback(data_collator))
        self.ref_model = None
        if ref_model is not None:
            ref_model.requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(ref_model.eval(), evaluation_mode=True)
        self._metric_sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._metric_counts = {"train": 0, "eval": 0}
        self._eval_prefix = "eval"
        if self.dpo_args.precompute_ref_scores:
            if self.train_dataset is not None:
                self.train_dataset = self.with_reference_scores(self.train_dataset)
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {name: self.with_reference_scores(d) for name, d in self.eval_dataset.items()}
            elif self.eval_dataset is not None:
                self.eval_dataset = self.with_reference_scores(self.eval_dataset)
            self.ref_model = None  # training keeps no reference model

    # ------------------------------------------------------------------------------------------------
    # Scores

    def _has_reference_scores(self, dataset) -> bool:
        columns = getattr(dataset, "column_names", None) or []
        if not set(REFERENCE_COLUMNS) <= set(columns):
            return False
        stored = json.loads(dataset[0][REF_FINGERPRINT_COLUMN]) if REF_FINGERPRINT_COLUMN in columns else None
        mismatch = fingerprint_mismatch(stored, self.ref_fingerprint)
        if mismatch:
            logger.warning("Not using the stored reference scores: %s. Recomputing them.", mismatch)
        return mismatch is None

    def policy_terms(self, model, inputs) -> torch.Tensor:
        """The policy's ELBO terms [2B, n] on the batch's masks (with gradient)."""
        n = self.dpo_args.mc_samples
        return elbo_samples(model_logits(model, inputs["attention_mask"], n), inputs, n, self.shift_logits)

    @torch.no_grad()
    def reference_scores(self, model, inputs) -> torch.Tensor:
        """The reference's scores B̂ref [2B]: precomputed, from the frozen copy, or from the adapter-free policy."""
        if self.dpo_args.precompute_ref_scores and "ref_scores" in inputs:  # stored scores only count when asked for
            return inputs["ref_scores"]
        n = self.dpo_args.mc_samples
        prefix = "" if self.dpo_args.antithetic_sampling else "ref_"
        if self.ref_model is not None:
            reference, context = self.ref_model, contextlib.nullcontext()
        else:
            reference = self.accelerator.unwrap_model(model)
            if not is_peft_model(reference):
                raise ValueError("No reference: pass ref_model, use a peft (LoRA) policy, or precompute the scores.")
            context = reference.disable_adapter()
        with context:
            terms = elbo_samples(model_logits(reference, inputs["attention_mask"], n), inputs, n, self.shift_logits,
                                 prefix)
        return terms.mean(dim=1)

    @torch.no_grad()
    def with_reference_scores(self, dataset):
        """`dataset` plus the reference's scores of every pair on its epoch-0 masks (computed here once)."""
        if self._has_reference_scores(dataset):
            return dataset
        dataset = dataset.remove_columns([c for c in (*REFERENCE_COLUMNS, REF_FINGERPRINT_COLUMN)
                                          if c in dataset.column_names])
        loader = self.accelerator.prepare(DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size,
                                                     collate_fn=self.eval_collator, shuffle=False))
        seeds, chosen, rejected = [], [], []
        for batch in loader:
            with self.compute_loss_context_manager():
                scores = self.reference_scores(self.model, batch).float()
            num_pairs = batch["mask_seed"].shape[0]
            gathered = self.accelerator.gather_for_metrics((batch["mask_seed"], scores[:num_pairs],
                                                            scores[num_pairs:]))
            for store, values in zip((seeds, chosen, rejected), gathered):
                store.append(values.cpu())
        if torch.cat(seeds).tolist() != list(dataset["mask_seed"]):
            raise RuntimeError("Reference scores came back out of order; cannot attach them to the pairs.")
        logger.info("Precomputed reference scores of %d pairs (%d samples each).", len(dataset),
                    self.dpo_args.mc_samples)
        dataset = dataset.add_column(REFERENCE_COLUMNS[0], torch.cat(chosen).tolist())
        dataset = dataset.add_column(REFERENCE_COLUMNS[1], torch.cat(rejected).tolist())
        return dataset.add_column(REF_FINGERPRINT_COLUMN, [json.dumps(self.ref_fingerprint)] * len(dataset))

    # ------------------------------------------------------------------------------------------------
    # Loss

    def _get_num_items_in_batch(self, batch_samples: list, device) -> torch.Tensor:
        """The number of pairs in the whole optimizer step (all micro-batches, all processes)."""
        total = torch.tensor(float(sum(b["mask_seed"].shape[0] for b in batch_samples)), device=device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        num_pairs = inputs["mask_seed"].shape[0]
        terms = self.policy_terms(model, inputs)
        policy = terms.mean(dim=1)  # VRPO: B̂(y) = (1/n) Σ_j ℓ_j(y)
        reference = self.reference_scores(model, inputs).to(policy.dtype)
        losses, chosen_rewards, rejected_rewards = preference_losses(
            policy[:num_pairs], policy[num_pairs:], reference[:num_pairs], reference[num_pairs:], self.dpo_args.beta)
        metrics = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": policy[:num_pairs],
            "logps/rejected": policy[num_pairs:],
        }
        if self.dpo_args.sft_weight > 0:
            sft = sft_losses(terms[:num_pairs], inputs["maskable"][:num_pairs].sum(dim=1))
            losses = losses + self.dpo_args.sft_weight * sft
            metrics["sft_loss"] = sft
        self.store_metrics(metrics, "train" if model.training else "eval")
        if num_items_in_batch is None:
            loss = losses.mean()
        else:
            # DDP averages gradients over processes; the pair count already covers all of them
            loss = losses.sum() / num_items_in_batch.clamp(min=1) * self.args.world_size
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The loss and reward metrics on fixed (epoch-0) masks, so evaluations compare across checkpoints."""
        train_collator = self.data_collator
        self.data_collator, self._eval_prefix = self.eval_collator, metric_key_prefix
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self.data_collator = train_collator

    # ------------------------------------------------------------------------------------------------
    # Metrics (TRL's names)

    def store_metrics(self, metrics: dict, mode: str) -> None:
        """Add this batch's per-pair values (gathered from all processes) to the sums logged next."""
        stacked = torch.stack([value.detach().float() for value in metrics.values()], dim=1)
        gathered = self.accelerator.gather_for_metrics(stacked)
        for name, total in zip(metrics, gathered.sum(dim=0).tolist()):
            self._metric_sums[mode][name] += total
        self._metric_counts[mode] += gathered.shape[0]

    def log(self, logs: dict, start_time=None) -> None:
        """Add the mean of each stored metric since the last log (eval: with the evaluation prefix), then reset."""
        mode = "train" if self.model.training else "eval"
        count = self._metric_counts[mode]
        if count:
            prefix = "" if mode == "train" else f"{self._eval_prefix}_"
            logs.update({f"{prefix}{name}": total / count for name, total in self._metric_sums[mode].items()})
            self._metric_sums[mode].clear()
            self._metric_counts[mode] = 0
        super().log(logs, start_time)
