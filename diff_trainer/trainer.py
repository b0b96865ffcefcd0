"""DiffusionTrainer: the HuggingFace Trainer with the masked-diffusion loss, ELBO evaluation and annealing."""

import logging
import math
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer, default_data_collator

from .collator import DiffusionCollator
from .data.labels import IGNORE_INDEX
from .diffusion.attention import annealed_attention_mask, annealing_ratio
from .diffusion.elbo import elbo_nll
from .diffusion.losses import denominator, diffusion_loss_sum, masked_token_losses, row_scales
from .diffusion.schedules import get_schedule
from .metrics import argmax_logits, token_accuracy_metrics
from .modeling import apply_lora, is_encoder_model, make_bidirectional, write_diffusion_config

logger = logging.getLogger(__name__)


class DiffusionTrainer(Trainer):
    """Trainer whose loss is the masked-diffusion loss of the batch made by `DiffusionCollator`.

    The loss is Σ numerators / Σ denominators over the whole optimizer step (all gradient-accumulation micro-batches
    on all processes), so accumulation and DDP give the gradient of one large batch.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_normalization: str, shift_logits: bool = False, attention_annealing_steps: int = 0,
                 eval_collator: Optional[DiffusionCollator] = None, eval_mc_samples: int = 8,
                 eval_mask_seed: int = 1234, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_normalization = loss_normalization
        self.shift_logits = shift_logits
        self.attention_annealing_steps = attention_annealing_steps
        self.eval_collator = eval_collator
        self.eval_mc_samples = eval_mc_samples
        self.eval_mask_seed = eval_mask_seed
        self.skipped_empty_batches = 0

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        """The loss denominator of the whole optimizer step, summed over micro-batches and processes."""
        total = sum(denominator(self.loss_normalization, b["maskable"], b["labels"] != IGNORE_INDEX)
                    for b in batch_samples).to(device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    def attention_mask_for(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The 2D padding mask, or during annealing a partly causal 4D float mask (DiffuLLaMA)."""
        if not self.model.training or self.attention_annealing_steps <= 0:
            return attention_mask
        ratio = annealing_ratio(self.state.global_step, self.attention_annealing_steps)
        if ratio >= 1.0:
            return attention_mask
        return annealed_attention_mask(attention_mask, ratio, dtype=dtype)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, maskable = inputs["labels"], inputs["maskable"]
        masked = labels != IGNORE_INDEX
        attention = self.attention_mask_for(inputs["attention_mask"], next(model.parameters()).dtype)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=attention)
        token_losses = masked_token_losses(outputs.logits, labels.clamp(min=0), masked, shift=self.shift_logits)
        numerator = diffusion_loss_sum(token_losses, inputs["loss_weight"],
                                       row_scales(self.loss_normalization, maskable))
        if num_items_in_batch is None:
            loss = numerator / denominator(self.loss_normalization, maskable, masked).clamp(min=1)
        else:
            # DDP averages gradients over processes; the denominator already counts all of them
            loss = numerator / num_items_in_batch.clamp(min=1) * self.args.world_size
        return (loss, {"logits": outputs.logits}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not inputs["maskable"].any():
            self.skipped_empty_batches += 1
            logger.warning("Skipped a batch with no maskable token (%d so far).", self.skipped_empty_batches)
            if self.args.world_size == 1:
                return torch.zeros((), device=self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Loss and masked-token accuracy on seeded masks, plus the ELBO bound (see `evaluation_loop`)."""
        train_collator = self.data_collator
        try:
            if self.eval_collator is not None:
                self.eval_collator.reseed()
                self.data_collator = self.eval_collator
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self.data_collator = train_collator

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.eval_mc_samples > 0:
            output.metrics.update(self.elbo_metrics(dataloader.dataset, metric_key_prefix))
        return output

    @torch.no_grad()
    def elbo_metrics(self, dataset: Dataset, prefix: str) -> dict:
        """`{prefix}_elbo_nll` (nats per trained token, an upper bound) and `{prefix}_elbo_perplexity`."""
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        model.eval()
        mask_token_id = self.model.config.diffusion_config["mask_token_id"]
        generator = torch.Generator().manual_seed(self.eval_mask_seed)
        total_nll, total_tokens = 0.0, 0
        masked_collator, self.data_collator = self.data_collator, default_data_collator
        try:
            dataloader = self.get_eval_dataloader(dataset)  # the loader keeps the clean collator
        finally:
            self.data_collator = masked_collator
        for batch in dataloader:
            ids, attention = batch["input_ids"], batch["attention_mask"]
            maskable = batch["labels"] != IGNORE_INDEX
            nll = elbo_nll(lambda noisy: model(input_ids=noisy.to(ids.device), attention_mask=attention.repeat(
                noisy.shape[0] // ids.shape[0], 1)).logits, ids.cpu(), maskable.cpu(), mask_token_id,
                self.eval_mc_samples, shift=self.shift_logits, generator=generator,
                batch_samples=ids.shape[0] * max(1, self.eval_mc_samples // 2))
            gathered = self.accelerator.gather_for_metrics((nll.to(ids.device), maskable.sum(dim=1)))
            total_nll += float(gathered[0].sum())
            total_tokens += int(gathered[1].sum())
        per_token = total_nll / max(total_tokens, 1)
        return {f"{prefix}_elbo_nll": per_token, f"{prefix}_elbo_perplexity": math.exp(min(per_token, 700.0))}


def default_normalization(train_dataset, packed: Optional[bool]) -> str:
    """LLaDA's defaults: packed rows -> llada_pretrain, one sample per row -> llada_sft.

    For data loaded with --skip_concat, rows with left padding (attention 0) count as one sample per row.
    """
    if packed is None:
        first = np.asarray(train_dataset[: min(len(train_dataset), 256)]["attention_mask"])
        packed = bool(first.all())
    return "llada_pretrain" if packed else "llada_sft"


def build_diffusion_trainer(model, tokenizer, diff_args, model_args, training_args, train_dataset, eval_dataset,
                            new_token_ids, *, packed: Optional[bool], row_packing: Optional[str] = None
                            ) -> DiffusionTrainer:
    """Make the model a self-describing diffusion model and wire trainer, collators and metrics."""
    if diff_args.shift_logits and is_encoder_model(model):
        raise ValueError("--shift_logits adapts a causal LM; an encoder (masked LM) predicts its own position.")
    if training_args.dataloader_persistent_workers and diff_args.eval_mc_samples > 0:
        raise ValueError("--dataloader_persistent_workers caches one eval loader, but the ELBO pass needs clean "
                         "batches besides the masked ones: drop the flag or set --eval_mc_samples 0.")
    mask_token_id = tokenizer.mask_token_id
    make_bidirectional(model)
    write_diffusion_config(model.config, mask_token_id=mask_token_id, shift_logits=diff_args.shift_logits,
                           noise_schedule=diff_args.noise_schedule, time_eps=diff_args.time_eps,
                           dff_token=model_args.dff_token, row_packing=row_packing)
    if model_args.use_lora:
        model = apply_lora(model, model_args, new_token_ids)
    normalization = diff_args.loss_normalization or default_normalization(train_dataset, packed)
    logger.info("Masked diffusion: mask id %d, %s schedule, loss normalisation %s.", mask_token_id,
                diff_args.noise_schedule, normalization)
    schedule = get_schedule(diff_args.noise_schedule, diff_args.time_eps)
    collator = DiffusionCollator(mask_token_id, schedule, antithetic_time=diff_args.antithetic_time,
                                 random_length_prob=diff_args.random_length_prob,
                                 prompt_dropout=diff_args.prompt_dropout)
    eval_collator = DiffusionCollator(mask_token_id, schedule, antithetic_time=diff_args.antithetic_time,
                                      seed=diff_args.eval_mask_seed)
    training_args.remove_unused_columns = False
    return DiffusionTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=token_accuracy_metrics(shift=diff_args.shift_logits),
        preprocess_logits_for_metrics=argmax_logits,
        loss_normalization=normalization,
        shift_logits=diff_args.shift_logits,
        attention_annealing_steps=diff_args.attention_annealing_steps,
        eval_collator=eval_collator,
        eval_mc_samples=diff_args.eval_mc_samples,
        eval_mask_seed=diff_args.eval_mask_seed,
    )
