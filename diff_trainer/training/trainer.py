"""DiffusionTrainer: the HuggingFace Trainer with a diffusion objective's loss, ELBO evaluation and annealing.

Loaders yield clean rows; the trainer applies the objective's forward process itself (`objectives`): each training
micro-batch with a generator seeded by (seed, global step, micro-batch, process), each evaluation with the same
seeded masks. Settings are read from `self.args` (`DiffusionTrainingArguments`).
"""

import logging
import math

import torch
from transformers import Trainer

from ..data.labels import IGNORE_INDEX
from ..data.pipeline import DOCUMENT_COLUMN, RowLayout
from ..diffusion.attention import (
    additive_mask,
    annealed_allowed,
    annealing_ratio,
    document_block_mask,
    same_document_allowed,
)
from ..diffusion.elbo import monte_carlo_copies
from ..diffusion_config import read_diffusion_config
from ..metrics import argmax_logits, token_accuracy_metrics
from ..models.bidirectional import is_encoder_model, is_peft_model
from ..objectives import objective_for
from ..objectives.masked import check_prefix_separator, prefix_shuffler, seeded_generator
from .checkpoints import FiniteStepsMixin
from .sharding import ShardedSaveMixin

logger = logging.getLogger(__name__)

MASKED_TARGETS = "masked_targets"  # evaluation labels: the clean id at masked positions, -100 elsewhere
ELBO_STREAM = 1  # generator stream of the ELBO pass (0: evaluation masks)


class StepNormalizedLoss:
    """Trainer mixin: the loss is Σ numerators / Σ denominators over the whole optimizer step (all gradient-
    accumulation micro-batches on all processes), so accumulation and DDP give the gradient of one large batch.

    Subclasses say what one batch adds to the denominator (`batch_denominator`) and divide their numerator by
    `share_of_denominator(num_items_in_batch)`. Adapter-only (LoRA) saves also keep the model's config.
    """

    loss_is_scaled_for_ga = True

    def batch_denominator(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def _get_num_items_in_batch(self, batch_samples: list, device) -> torch.Tensor:
        """The loss denominator of the whole optimizer step, summed over micro-batches and processes."""
        total = torch.stack([self.batch_denominator(batch).float().to(device) for batch in batch_samples]).sum()
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    def share_of_denominator(self, num_items_in_batch) -> torch.Tensor | None:
        """What this process divides by: the step's denominator / processes (DDP averages the gradients)."""
        if num_items_in_batch is None:
            return None
        return num_items_in_batch.clamp(min=1) / self.args.world_size

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        model = self.accelerator.unwrap_model(self.model)
        if is_peft_model(model) and self.args.should_save:  # diffusion_config, is_causal, resized vocab
            model.get_base_model().config.save_pretrained(output_dir or self.args.output_dir)


def with_documents(noised: dict, clean: dict) -> dict:
    """The noised batch, carrying the clean rows' recorded documents (packed conversations) when they have them."""
    if DOCUMENT_COLUMN in clean:
        noised[DOCUMENT_COLUMN] = clean[DOCUMENT_COLUMN]
    return noised


def default_normalization(layout: RowLayout) -> str:
    """LLaDA's defaults: packed rows -> llada_pretrain, one sample per row (left or right padded) -> llada_sft."""
    return "llada_pretrain" if layout.packed else "llada_sft"


class DiffusionTrainer(FiniteStepsMixin, ShardedSaveMixin, StepNormalizedLoss, Trainer):
    """Trainer whose loss is the loss of the model's recorded objective (see the module docstring).

    `row_layout` (from `Preprocessor.run`) picks the default --loss_normalization (needed when it is not given).
    Data collator: the default one (clean rows); the model must carry a `diffusion_config`
    (training.model.prepare_model).
    """

    def __init__(self, model, args, *, row_layout: RowLayout | None = None, **kwargs):
        base = model.get_base_model() if is_peft_model(model) else model
        diffusion_config = read_diffusion_config(base.config)
        if diffusion_config is None:
            raise ValueError(
                "DiffusionTrainer needs a masked-diffusion model: prepare it with "
                "training.model.prepare_model(..., mode='diffusion')."
            )
        if args.loss_normalization is None and row_layout is None:
            raise ValueError("DiffusionTrainer: pass the rows' layout (Preprocessor.run) or --loss_normalization.")
        if args.attention_annealing_steps > 0 and is_encoder_model(model):
            raise ValueError("--attention_annealing_steps anneals a causal model; an encoder is already bidirectional.")
        if args.isolate_documents and (row_layout is None or not row_layout.packed):
            raise ValueError(
                "--isolate_documents separates the EOS-terminated documents of packed rows: add "
                "--concatenate_texts (a row holding one sample has nothing to isolate)."
            )
        kwargs.setdefault("compute_metrics", token_accuracy_metrics(shift=args.shift_logits))
        kwargs.setdefault("preprocess_logits_for_metrics", argmax_logits)
        super().__init__(model=model, args=args, **kwargs)
        self.label_names = [MASKED_TARGETS]
        # the columns the noiser reads, whatever the model's forward accepts (a DDiT takes no `labels`)
        self._signature_columns = ["input_ids", "attention_mask", "labels", DOCUMENT_COLUMN]
        self.loss_normalization = args.loss_normalization or default_normalization(row_layout)
        self.skipped_empty_batches = 0
        self._eval_generator = None
        self.eval_prefix_shuffler = None  # --eval_prefix_shuffle: also applied to the ELBO's rows
        # --isolate_documents: packing ends every document with the tokenizer's EOS
        self.eos_token_id = getattr(self.processing_class, "eos_token_id", None)
        if args.isolate_documents and self.eos_token_id is None:
            raise ValueError(
                "--isolate_documents: pass the tokenizer (processing_class), whose EOS ends each packed document."
            )
        self.flex_attention = base.config._attn_implementation == "flex_attention"
        if self.flex_attention and args.isolate_documents and args.attention_annealing_steps > 0:
            raise ValueError(
                "--isolate_documents with --attention_annealing_steps needs a 4D mask: use "
                "--attn_implementation sdpa or eager instead of flex_attention."
            )
        shuffler = self.build_prefix_shuffler()
        self.eval_prefix_shuffler = shuffler if args.eval_prefix_shuffle else None
        # before the Trainer compiles or wraps the model (the masked head holds the model's output layer)
        self.objective = objective_for(diffusion_config).from_model(model, args, shuffler)
        self.train_noiser, self.eval_noiser = self.objective.train_noiser, self.objective.eval_noiser
        self.masked_head = self.objective.masked_head
        logger.info(
            "%s (%s), loss normalisation %s.",
            self.objective.title.capitalize(),
            ", ".join(
                f"{key} {diffusion_config[key]}"
                for key in ("objective", "mask_token_id")
                if diffusion_config.get(key) is not None
            ),
            self.loss_normalization,
        )

    def build_prefix_shuffler(self):
        """--prefix_shuffle's shuffler (None when off), its separator checked against the first training rows."""
        if self.args.prefix_shuffle == "none":
            return None
        if self.processing_class is None:
            raise ValueError("--prefix_shuffle needs the tokenizer: pass it to DiffusionTrainer as processing_class.")
        shuffler = prefix_shuffler(self.processing_class, self.args.prefix_shuffle, self.args.prefix_separator)
        if shuffler.unit == "segments" and self.train_dataset is not None:
            check_prefix_separator(
                shuffler, self.train_dataset.select(range(min(64, len(self.train_dataset)))), self.args.prefix_separator
            )
        return shuffler

    # ------------------------------------------------------------------------------------------------
    # Training

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """The optimizer step's micro-batches, each noised with its (seed, step, micro-batch, process) generator."""
        batches = []
        for index in range(num_batches):
            try:
                clean = self._prepare_inputs(next(epoch_iterator))
            except StopIteration:
                break
            generator = seeded_generator(self.args.seed, self.state.global_step, index, self.args.process_index)
            batches.append(with_documents(self.train_noiser(clean, generator), clean))
        return batches, (self._get_num_items_in_batch(batches, device) if batches else None)

    def batch_denominator(self, batch: dict) -> torch.Tensor:
        return self.objective.denominator(self.loss_normalization, batch)

    def attention_for(
        self,
        attention_mask: torch.Tensor,
        clean_ids: torch.Tensor,
        dtype: torch.dtype,
        documents: torch.Tensor | None = None,
    ):
        """The 2D padding mask, or a 4D float mask while attention is annealed (DiffuLLaMA, training only) and
        when documents are isolated (from the rows' recorded `documents`, else the clean rows' EOS, which noising
        may have masked)."""
        allowed = None
        ratio = annealing_ratio(self.state.global_step, self.args.attention_annealing_steps)
        if self.model.training and ratio < 1.0:
            allowed = annealed_allowed(attention_mask, ratio)
        if self.args.isolate_documents and self.flex_attention:  # annealing is refused with it (__init__)
            return document_block_mask(clean_ids, attention_mask, self.eos_token_id, documents)
        if self.args.isolate_documents:
            same = same_document_allowed(clean_ids, attention_mask, self.eos_token_id, documents)
            allowed = same if allowed is None else allowed & same
        return attention_mask if allowed is None else additive_mask(allowed, dtype)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        attention = self.attention_for(
            inputs["attention_mask"], inputs["clean_ids"], next(model.parameters()).dtype, inputs.get(DOCUMENT_COLUMN)
        )
        loss, logits = self.objective.loss(
            model,
            inputs,
            self.loss_normalization,
            self.share_of_denominator(num_items_in_batch),
            attention,
            with_logits=return_outputs,
        )
        return (loss, {"logits": logits}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not inputs["maskable"].any():
            self.skipped_empty_batches += 1
            logger.warning("Skipped a batch with no maskable token (%d so far).", self.skipped_empty_batches)
            if self.args.world_size == 1:
                return torch.zeros((), device=self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    # ------------------------------------------------------------------------------------------------
    # Evaluation: loss and accuracy on seeded masks, and the ELBO bound, from the same clean-row loader

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._eval_generator = seeded_generator(self.args.eval_mask_seed, self.args.process_index)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.args.eval_mc_samples > 0:
            output.metrics.update(self.elbo_metrics(dataloader, metric_key_prefix))
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        clean = self._prepare_inputs(inputs)
        noisy = with_documents(self.eval_noiser(clean, self._eval_generator), clean)
        noisy[MASKED_TARGETS] = noisy["clean_ids"].masked_fill(~noisy["masked"], IGNORE_INDEX)
        return super().prediction_step(model, noisy, prediction_loss_only, ignore_keys)

    @torch.no_grad()
    def elbo_metrics(self, dataloader, prefix: str) -> dict:
        """`{prefix}_elbo_nll` (nats per trained token, an upper bound) and `{prefix}_elbo_perplexity`.

        Every tensor stays on the model's device and the forward passes run under the Trainer's autocast.
        """
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        model.eval()
        samples = self.args.eval_mc_samples
        dtype = next(model.parameters()).dtype  # of the isolation mask, when --isolate_documents
        generator = seeded_generator(self.args.eval_mask_seed, self.args.process_index, ELBO_STREAM)
        total_nll, total_tokens = 0.0, 0
        for batch in dataloader:
            batch = self._prepare_inputs(batch)
            ids, attention = batch["input_ids"], batch["attention_mask"]
            maskable = batch["labels"] != IGNORE_INDEX
            documents = batch.get(DOCUMENT_COLUMN)
            if self.eval_prefix_shuffler is not None:
                ids = self.eval_prefix_shuffler(ids, batch["labels"], attention, generator)
            nlls = []
            for rows in torch.split(torch.arange(len(ids), device=ids.device), max(1, len(ids) // 2)):
                with self.accelerator.autocast():
                    nlls.append(
                        self.objective.elbo_nll(
                            model,
                            ids[rows],
                            attention[rows],
                            maskable[rows],
                            samples,
                            generator,
                            attention_for=lambda copies, copy_ids, rows=rows, documents=documents: self.attention_for(
                                copies,
                                copy_ids,
                                dtype,
                                None if documents is None else monte_carlo_copies(documents[rows], samples),
                            ),
                        )
                    )
            gathered = self.accelerator.gather_for_metrics((torch.cat(nlls), maskable.sum(dim=1)))
            total_nll += float(gathered[0].sum())
            total_tokens += int(gathered[1].sum())
        per_token = total_nll / max(total_tokens, 1)
        return {f"{prefix}_elbo_nll": per_token, f"{prefix}_elbo_perplexity": math.exp(min(per_token, 700.0))}
