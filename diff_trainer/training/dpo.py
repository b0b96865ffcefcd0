"""DiffusionDPOTrainer: preference optimisation of diffusion LMs with VRPO (LLaDA 1.5).

A diffusion LM has no exact log-likelihood, so DPO's log-ratios use ELBO scores. VRPO keeps their variance low:
  - budget n = --mc_samples per response: n noisy copies, their noise stratified over the copies;
  - antithetic sampling: policy and reference score exactly the same noisy copies, so with policy = reference
    every reward is exactly 0 and the noise in the difference cancels.

    B̂(y) = (1/n) Σ_j ℓ_j(y)                     ℓ_j: one ELBO term of the policy's objective
    reward(y) = β · (B̂θ(y) − B̂ref(y))
    loss = −log σ(reward(y_w) − reward(y_l)) + sft_weight · SFT loss on y_w

The checkpoint's objective draws the copies (`preference_noise`, in the collator) and scores them
(`preference_terms`): masked diffusion masks l_j ~ U{1..L} response tokens, ℓ_j = −(L/l_j) Σ_masked CE (LLaDA
eq. 14); block diffusion draws a time per block, ℓ_j = −Σ_b w(t_b) Σ_{masked in b} CE over [x_t ; x0] (BD3-LM).

The reference is a frozen copy, the policy with its LoRA adapters disabled, or scores precomputed once with
`precompute_reference_scores` (an explicit step before the trainer is built). Settings: `DPOTrainingArguments`,
read as `self.args.beta`.
"""

import contextlib
import copy
import json
import logging
import math
from collections import defaultdict
from dataclasses import replace

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from ..data.preference import (
    REFERENCE_COLUMNS,
    TOKEN_COLUMNS,
    PreferenceCollator,
    fingerprint_mismatch,
    reference_fingerprint,
    run_fingerprint,
)
from ..diffusion.masked_head import MaskedHead, masked_head_for
from ..diffusion_config import read_diffusion_config
from ..models.bidirectional import is_peft_model
from ..objectives import Objective, objective_for
from .checkpoints import FiniteStepsMixin
from .sharding import ShardedSaveMixin, prepare_frozen_model
from .trainer import StepNormalizedLoss

logger = logging.getLogger(__name__)

REF_FINGERPRINT_COLUMN = "ref_fingerprint"
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


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


@torch.no_grad()
def reference_scores(
    reference, inputs, num_samples: int, *, objective: Objective, antithetic: bool, head: MaskedHead = None
) -> torch.Tensor:
    """The reference's scores B̂ref [2B]: `reference` is a frozen model, or a peft policy with adapters disabled,
    scored by `objective` (the one whose `preference_noise` drew the batch).

    antithetic: on the policy's masks (VRPO); otherwise on the batch's own reference masks (`ref_` keys).
    `head`: the reference's MaskedHead (None: full logits).
    """
    context = reference.disable_adapter() if is_peft_model(reference) else contextlib.nullcontext()
    with context:
        terms = objective.preference_terms(
            reference, inputs, num_samples, prefix="" if antithetic else "ref_", head=head
        )
    return terms.mean(dim=1)


def checked_diffusion_config(model) -> dict:
    """The policy's diffusion_config (peft or not); ValueError for a model that is not a diffusion LM."""
    base = model.get_base_model() if is_peft_model(model) else model
    diffusion_config = read_diffusion_config(base.config)
    if diffusion_config is None:
        raise ValueError(
            "The policy is not a masked-diffusion checkpoint (its config has no diffusion_config). "
            "Train one with run_clm_diff.py --train_diff_model first."
        )
    return diffusion_config


def preference_objective(model) -> Objective:
    """The objective recorded by `model` (peft or not), which draws and scores its VRPO copies; ValueError for a
    model that is not a diffusion LM or whose objective defines no preference scores."""
    objective = objective_for(checked_diffusion_config(model))
    if not objective.scores_preferences:
        raise ValueError(f"VRPO / DPO scores are not defined for {objective.title} checkpoints.")
    return objective.from_model(model)


def check_masked_head(objective: Objective, args) -> bool:
    """Whether scores project only the masked positions (--masked_head, on by default where the objective can)."""
    if args.masked_head and not objective.preference_head:
        raise ValueError(
            f"--masked_head true: {objective.title} scores read the logits of every position; drop the flag."
        )
    return args.masked_head is not False and objective.preference_head


def check_same_noise(objective: Objective, ref_model) -> None:
    """ValueError when the reference's objective would draw other noisy copies than the policy's (VRPO shares them)."""
    theirs, ours = repr(preference_objective(ref_model).preference_noise()), repr(objective.preference_noise())
    if theirs != ours:
        raise ValueError(
            f"The reference model draws its scores' noise as {theirs} but the policy as {ours}; DPO compares "
            "the two on the same noisy copies: use a reference with the policy's objective, block size, mask id "
            "and schedule."
        )


def preference_collator(model, objective: Objective, tokenizer, args, fixed_epoch=None) -> PreferenceCollator:
    """The collator of `model`'s pairs: its objective's noise and mask id, the tokenizer's pad id (or EOS), the args'
    MC budget."""
    base = model.get_base_model() if is_peft_model(model) else model
    pad_id = getattr(tokenizer, "pad_token_id", None)
    return PreferenceCollator(
        objective.mask_token_id,
        pad_id if pad_id is not None else base.config.eos_token_id,
        num_samples=args.mc_samples,
        antithetic=args.antithetic_sampling,
        fixed_epoch=fixed_epoch,
        noise=objective.preference_noise(),
    )


def has_reference_scores(dataset, fingerprint: dict) -> bool:
    """Whether `dataset` carries reference scores whose stored fingerprint agrees with every entry of `fingerprint`
    (a mismatch is logged, naming what changed)."""
    columns = getattr(dataset, "column_names", None) or []
    if not set(REFERENCE_COLUMNS) <= set(columns):
        return False
    stored = json.loads(dataset[0][REF_FINGERPRINT_COLUMN]) if REF_FINGERPRINT_COLUMN in columns else None
    mismatch = fingerprint_mismatch(stored, fingerprint)
    if mismatch:
        logger.warning("Not using the stored reference scores: %s.", mismatch)
    return mismatch is None


@torch.no_grad()
def precompute_reference_scores(pairs: DatasetDict, reference, tokenizer, args) -> DatasetDict:
    """Every split of `pairs` with the reference's scores of each pair on its epoch-0 masks and their fingerprint
    (splits whose stored scores have the same fingerprint are kept, others are scored again). `reference`: the
    reference model, or the peft policy (adapters disabled). Processes score their share; every process gets all."""
    fingerprint = reference_fingerprint(
        getattr(reference, "name_or_path", ""), args.mc_samples, args.antithetic_sampling, args.seed
    )
    accelerator = Accelerator()
    objective = preference_objective(reference)
    collator = preference_collator(reference, objective, tokenizer, args, fixed_epoch=0)
    with masked_head_for(reference, check_masked_head(objective, args)) as head:
        model = accelerator.prepare_model(reference.eval(), evaluation_mode=True)
        return DatasetDict(
            {
                name: scored_split(name, dataset, model, head, collator, accelerator, args, objective, fingerprint)
                for name, dataset in pairs.items()
            }
        )


def scored_split(name: str, dataset, model, head, collator, accelerator, args, objective, fingerprint: dict):
    """One split of `precompute_reference_scores`: kept when its stored scores have `fingerprint`, else scored."""
    if has_reference_scores(dataset, fingerprint):
        return dataset
    dataset = dataset.remove_columns(
        [c for c in (*REFERENCE_COLUMNS, REF_FINGERPRINT_COLUMN) if c in dataset.column_names]
    )
    loader = accelerator.prepare(
        DataLoader(dataset, batch_size=args.per_device_eval_batch_size, collate_fn=collator, shuffle=False)
    )
    seeds, chosen, rejected = [], [], []
    for batch in loader:
        with accelerator.autocast():
            scores = reference_scores(
                model, batch, args.mc_samples, objective=objective, antithetic=True, head=head
            ).float()
        num_pairs = batch["mask_seed"].shape[0]
        gathered = accelerator.gather_for_metrics((batch["mask_seed"], scores[:num_pairs], scores[num_pairs:]))
        for store, values in zip((seeds, chosen, rejected), gathered):
            store.append(values.cpu())
    if torch.cat(seeds).tolist() != list(dataset["mask_seed"]):
        raise RuntimeError("Reference scores came back out of order; cannot attach them to the pairs.")
    logger.info("Precomputed reference scores of %d %s pairs (%d samples each).", len(dataset), name, args.mc_samples)
    dataset = dataset.add_column(REFERENCE_COLUMNS[0], torch.cat(chosen).tolist())
    dataset = dataset.add_column(REFERENCE_COLUMNS[1], torch.cat(rejected).tolist())
    return dataset.add_column(REF_FINGERPRINT_COLUMN, [json.dumps(fingerprint)] * len(dataset))


class MaskEpochCallback(TrainerCallback):
    """Tells the collator which epoch starts, so a pair's masks change from epoch to epoch.

    Data-loader workers copy the collator when an epoch's iterator starts, so they see the new epoch; persistent
    workers (--dataloader_persistent_workers) keep the first epoch's masks.
    """

    def __init__(self, collator: PreferenceCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = math.floor(state.epoch or 0)  # state.epoch is e + fraction done, e after epoch e-1


class DiffusionDPOTrainer(FiniteStepsMixin, ShardedSaveMixin, StepNormalizedLoss, Trainer):
    """Trainer with the VRPO loss on `PreferenceCollator` batches (see the module docstring); `args` is a
    `DPOTrainingArguments`.

    Reference: `ref_model` (frozen); else for a peft `model` the model with adapters disabled; else a copy of `model`
    made here. With --precompute_ref_scores the datasets must carry the scores (`precompute_reference_scores`) and
    no reference model is kept. The loss is Σ per-pair losses / pairs of the whole optimizer step.
    """

    def __init__(
        self,
        model,
        ref_model=None,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        data_collator=None,
        **kwargs,
    ):
        self.objective = preference_objective(model)  # draws (in the collator) and scores the noisy copies
        args.remove_unused_columns = False  # the collator needs prompt/response ids and mask seeds
        datasets = [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
        for dataset in datasets:
            if dataset is not None and not set(TOKEN_COLUMNS) <= set(getattr(dataset, "column_names", None) or []):
                raise ValueError(
                    f"Datasets need the columns {TOKEN_COLUMNS}: tokenise the pairs with "
                    "diff_trainer.data.preference.tokenize_pairs."
                )
            if (
                args.precompute_ref_scores
                and dataset is not None
                and not has_reference_scores(
                    dataset, run_fingerprint(args.mc_samples, args.antithetic_sampling, args.seed)
                )
            ):
                raise ValueError(
                    "--precompute_ref_scores: score the pairs first with "
                    "diff_trainer.training.dpo.precompute_reference_scores."
                )
        if args.precompute_ref_scores:
            ref_model = None  # training keeps no reference model
        elif ref_model is None and not is_peft_model(model):
            ref_model = copy.deepcopy(model)  # the policy's starting point
        elif ref_model is not None:
            check_same_noise(self.objective, ref_model)
        if args.disable_dropout:
            disable_dropout(model)
            if ref_model is not None:
                disable_dropout(ref_model)
        if data_collator is None:
            data_collator = preference_collator(
                model, self.objective, processing_class, args, fixed_epoch=0 if args.precompute_ref_scores else None
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.eval_collator = replace(data_collator, fixed_epoch=0)  # the same masks at every evaluation
        if data_collator.fixed_epoch is None:
            self.add_callback(MaskEpochCallback(data_collator))
        enabled = check_masked_head(self.objective, args)  # hooks go on before the Trainer compiles or wraps models
        self.masked_head = MaskedHead(model) if enabled else None
        self.ref_masked_head = MaskedHead(ref_model) if enabled and ref_model is not None else self.masked_head
        self.ref_model = None
        if ref_model is not None:
            ref_model.requires_grad_(False)
            self.ref_model = prepare_frozen_model(self.accelerator, ref_model.eval())
        self._metric_sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._metric_counts = {"train": 0, "eval": 0}
        self._eval_prefix = "eval"

    # ------------------------------------------------------------------------------------------------
    # Scores

    def policy_terms(self, model, inputs) -> torch.Tensor:
        """The policy's ELBO terms [2B, n] on the batch's masks (with gradient)."""
        return self.objective.preference_terms(model, inputs, self.args.mc_samples, head=self.masked_head)

    @torch.no_grad()
    def reference_scores(self, model, inputs) -> torch.Tensor:
        """The reference's scores B̂ref [2B]: precomputed, from the frozen copy, or from the adapter-free policy."""
        if self.args.precompute_ref_scores and "ref_scores" in inputs:  # stored scores only count when asked for
            return inputs["ref_scores"]
        reference = self.ref_model if self.ref_model is not None else self.accelerator.unwrap_model(model)
        if reference is not self.ref_model and not is_peft_model(reference):
            raise ValueError("No reference: pass ref_model, use a peft (LoRA) policy, or precompute the scores.")
        return reference_scores(
            reference,
            inputs,
            self.args.mc_samples,
            objective=self.objective,
            antithetic=self.args.antithetic_sampling,
            head=self.ref_masked_head,
        )

    # ------------------------------------------------------------------------------------------------
    # Loss

    def batch_denominator(self, batch: dict) -> torch.Tensor:
        """The number of pairs in the batch."""
        return torch.tensor(float(batch["mask_seed"].shape[0]))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        num_pairs = inputs["mask_seed"].shape[0]
        terms = self.policy_terms(model, inputs)
        policy = terms.mean(dim=1)  # VRPO: B̂(y) = (1/n) Σ_j ℓ_j(y)
        reference = self.reference_scores(model, inputs).to(policy.dtype)
        losses, chosen_rewards, rejected_rewards = preference_losses(
            policy[:num_pairs], policy[num_pairs:], reference[:num_pairs], reference[num_pairs:], self.args.beta
        )
        metrics = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": policy[:num_pairs],
            "logps/rejected": policy[num_pairs:],
        }
        if self.args.sft_weight > 0:
            sft = sft_losses(terms[:num_pairs], inputs["maskable"][:num_pairs].sum(dim=1))
            losses = losses + self.args.sft_weight * sft
            metrics["sft_loss"] = sft
        self.store_metrics(metrics, "train" if model.training else "eval")
        share = self.share_of_denominator(num_items_in_batch)
        loss = losses.mean() if share is None else losses.sum() / share
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The loss and reward metrics on fixed (epoch-0) masks, so evaluations compare across checkpoints."""
        self._eval_prefix = metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        """The evaluation pairs with the evaluation collator (epoch-0 masks)."""
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("DiffusionDPOTrainer: evaluation requires an eval_dataset.")
        return self.accelerator.prepare(
            DataLoader(
                dataset,
                batch_size=self.args.eval_batch_size,
                collate_fn=self.eval_collator,
                shuffle=False,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
        )

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
