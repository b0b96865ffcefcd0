"""DiffusionGRPOTrainer: TRL's GRPOTrainer with rollouts from the checkpoint's sampler (masked or block diffusion) and
per-token log-probabilities from a diffusion estimator (diffusion/policy_logps.py; DESIGN.md §3d).

What is overridden, and why:
- `_tokenize_prompts`: text prompts are encoded as in training (no special tokens after them).
- `_generate_single_turn`: completions come from `sampling.settings.run_sampler`, one prompt's group at a time,
  seeded per (seed, step, rollout), so one process and several draw the same completions.
- `_get_per_token_logps_and_entropies`: the estimator's log-probabilities, on masks seeded per (seed, generation
  step, iteration, rollout) so the current, old and reference policies see the same masks within an iteration.
  `elbo` gives one value per completion; it is written into every completion token, so TRL's per-token ratio, clip
  and k3 KL are the sequence-level ones. A block-diffusion checkpoint is scored through its objective's forward on
  rows moved to start at column 0 (its blocks are aligned to positions).
- `_generate_and_score_completions`: old and reference scores once per reuse (num_iterations), stacked [B, I, C],
  with each rollout's index and generation step (the batch is shuffled before training); wd1's weights.
- `_compute_loss`: picks the iteration's old / reference scores; `loss_type wd1` (ratio-free weighted likelihood).
- `training_step`: logs the seconds of each optimizer step spent in rollouts, in scoring (every estimator forward:
  current, old, reference) and in the backward pass, as `time/rollout`, `time/scoring`, `time/backward`.
Everything else (advantages, clipping, KL, logging, LoRA, distributed training) is TRL's.
"""

import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import use_adapter

from ..data.pipeline import bos_prefix
from ..diffusion.block import predictor_positions
from ..diffusion.elbo import monte_carlo_copies
from ..diffusion.policy_logps import draw_masks, mask_generators, score_draw
from ..diffusion.policy_losses import wd1_weights
from ..diffusion_config import read_diffusion_config
from ..models.bidirectional import make_bidirectional, unwrap_peft
from ..objectives.block import BlockDiffusion
from ..sampling.masked import padded_position_ids
from ..sampling.settings import run_sampler, sampler_for, sampler_kind


def require_diffusion_policy(diffusion_config: dict | None, name: str) -> dict:
    """`diffusion_config` of checkpoint `name` when it is masked or block diffusion; ValueError for a causal or SEDD
    one."""
    if diffusion_config is None:
        raise ValueError(
            f"{name} is not a diffusion checkpoint (no diffusion_config in its config); "
            "train one with run_clm_diff.py --train_diff_model."
        )
    if sampler_kind(diffusion_config) == "sedd":
        raise ValueError(f"{name} is a SEDD checkpoint; GRPO's log-probability estimators need masked diffusion.")
    return diffusion_config


def check_block_estimator(args) -> None:
    """ValueError for settings an estimator cannot honour on a block-diffusion checkpoint."""
    if args.logp_estimator == "one_step" and args.p_mask_prompt > 0:
        raise ValueError(
            f"--p_mask_prompt {args.p_mask_prompt}: a block-diffusion model reads the prompt as the clean context "
            "of the blocks after it, which training never masks; pass --p_mask_prompt 0 for one_step."
        )


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A text prompt's ids as in training: `bos_prefix`, then the text without special tokens (TRL's own encoding
    appends the tokenizer's special tokens, e.g. a byte tokenizer's EOS, which no training row has there)."""
    return bos_prefix(tokenizer) + tokenizer.encode(prompt, add_special_tokens=False)


def until_stop(ids: list[int], stop_ids) -> list[int]:
    """`ids` up to and including the first of `stop_ids` (all of them when there is none)."""
    ends = [k for k, token in enumerate(ids) if token in stop_ids]
    return ids[: ends[0] + 1] if ends else ids


def _recording_logits_fn(model, attention_mask, seen: list):
    """logits_fn of the estimators: `model` on noisy rows (positions counting attended tokens, as the sampler), each
    call's logits appended to `seen`."""
    position_ids = padded_position_ids(attention_mask)

    def logits_fn(noisy_ids):
        seen.append(model(input_ids=noisy_ids, attention_mask=attention_mask, position_ids=position_ids).logits)
        return seen[-1]

    return logits_fn


def _block_logits_fn(objective: BlockDiffusion, model, clean_ids, attention_mask, seen: list):
    """logits_fn of the estimators for a block-diffusion `model`: one forward over [noisy ; clean] under the block
    mask, read at each position as a plain model's logits (shift: next token); rows start at column 0 and fill whole
    blocks. Each call's logits are appended to `seen`."""
    source = predictor_positions(clean_ids.shape[1], objective.block_size, objective.shift, device=clean_ids.device)
    source = source.roll(-1) if objective.shift else source  # shift: position i holds the logits predicting i + 1

    def logits_fn(noisy_ids):
        copies = noisy_ids.shape[0] // clean_ids.shape[0]
        clean, padding = monte_carlo_copies(clean_ids, copies), monte_carlo_copies(attention_mask, copies)
        seen.append(objective.forward(model, noisy_ids, clean, padding)[:, source])
        return seen[-1]

    return logits_fn


def left_aligned(attention_mask) -> torch.Tensor:
    """Column index [B, T] that moves each row's left padding behind its tokens (gather with it; scatter back)."""
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    leading = (attention_mask.cumsum(dim=1) == 0).sum(dim=1, keepdim=True)
    return (columns + leading) % attention_mask.shape[1]


class DiffusionGRPOTrainer(GRPOTrainer):
    """GRPO (and wd1) for masked-diffusion LMs; `args` is a DiffusionGRPOConfig."""

    def __init__(self, model, reward_funcs, args, processing_class, **kwargs):
        config = unwrap_peft(model).config
        diffusion_config = require_diffusion_policy(read_diffusion_config(config), config.name_or_path or "the policy")
        self.block = None  # block diffusion: its objective (the forward over [noisy ; clean], L', schedule)
        if sampler_kind(diffusion_config) == "block":
            check_block_estimator(args)
            self.block = BlockDiffusion.from_model(model)
        self.sampler_config = sampler_for(
            diffusion_config,
            processing_class,
            gen_length=args.max_completion_length,
            steps=args.steps,
            block_length=args.block_length,
            temperature=args.temperature,
            remasking=args.remasking,
            threshold=args.threshold,
            cache=args.cache,
        )
        self.mask_token_id = diffusion_config["mask_token_id"]
        self.shift = bool(diffusion_config.get("shift_logits", False))
        self._mask_context = None  # (generation step, iteration, rollout indices) of the rows being scored
        self._phase_seconds = defaultdict(float)  # training seconds per phase since the last optimizer step
        self._loss_ready = None  # when compute_loss returned: the backward pass starts
        super().__init__(model, reward_funcs, args=args, processing_class=processing_class, **kwargs)
        if self.ref_model is not None:  # TRL loads the reference with its causal auto class
            make_bidirectional(self.accelerator.unwrap_model(self.ref_model))

    # ------------------------------------------------------------------------------------------------
    # Where a step's time goes

    PHASES = ("rollout", "scoring", "backward")

    @contextmanager
    def _timed(self, phase: str):
        """Adds the block's seconds to `phase` while training (evaluation is not counted)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.model.training:
                self._phase_seconds[phase] += time.perf_counter() - start

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._loss_ready = time.perf_counter()
        return loss

    def training_step(self, model, inputs, num_items_in_batch):
        output = super().training_step(model, inputs, num_items_in_batch)
        self._phase_seconds["backward"] += time.perf_counter() - self._loss_ready  # loss scaling and backward
        if self._step % self.current_gradient_accumulation_steps == 0:  # TRL's step_time boundary
            for phase in self.PHASES:
                self._metrics["train"][f"time/{phase}"].append(self._phase_seconds[phase])
            self._phase_seconds.clear()
        return output

    # ------------------------------------------------------------------------------------------------
    # Rollouts

    def _tokenize_prompts(self, prompts: list):
        if is_conversational({"prompt": prompts[0]}):  # chat templates: TRL's rendering
            return super()._tokenize_prompts(prompts)
        return [encode_prompt(self.processing_class, prompt) for prompt in prompts], None, {}

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        rollouts = self._mask_context[2].tolist()
        if len(rollouts) != len(prompt_ids):  # TRL's tool loop continues a subset of the rows
            raise ValueError("DiffusionGRPOTrainer does not run tool calls: drop `tools`.")
        with self._timed("rollout"):
            return self._sample(prompt_ids, rollouts, num_generations)

    def _sample(self, prompt_ids, rollouts: list[int], group_size: int):
        """Completions of `prompt_ids` (lists of ids), each cut after its first EOS. Each prompt's group is sampled
        on its own, seeded by (seed, step, its first rollout's global index), so a completion does not depend on
        the batch around it or on the number of processes (a group split across processes: on each part's)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        completions = []
        starts = [k for k, rollout in enumerate(rollouts) if k == 0 or rollout % group_size == 0]
        for start, end in zip(starts, starts[1:] + [len(rollouts)]):
            seed = int(np.random.SeedSequence([self.args.seed, self._step, rollouts[start]]).generate_state(1)[0])
            with torch.no_grad():
                group = [list(ids) for ids in prompt_ids[start:end]]
                result = run_sampler(model, group, self.sampler_config, seed=seed)
            completions += [until_stop(row, self.sampler_config.eos_ids) for row in result.generated.cpu().tolist()]
        model.train(was_training)
        return completions, None

    # ------------------------------------------------------------------------------------------------
    # Log-probabilities

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        with self._timed("scoring"):
            return self._estimated_logps(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy)

    def _estimated_logps(self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy):
        """The estimator's log-probabilities of the completions [B, logits_to_keep] (and entropies), on the masks of
        `self._mask_context`."""
        step, iteration, rollouts = self._mask_context
        length = input_ids.shape[1]
        completion_mask = attention_mask.clone().bool()
        completion_mask[:, : length - logits_to_keep] = False
        prompt_mask = attention_mask.bool() & ~completion_mask
        if self.block is not None:  # blocks are aligned to positions: every row from column 0, in whole blocks
            order = left_aligned(attention_mask)
            input_ids, attention_mask, prompt_mask, completion_mask = (
                tensor.gather(1, order) for tensor in (input_ids, attention_mask, prompt_mask, completion_mask)
            )
            input_ids, attention_mask = self.block.whole_blocks(input_ids, attention_mask)
            filled = (0, input_ids.shape[1] - length)
            prompt_mask, completion_mask = (F.pad(mask, filled, value=False) for mask in (prompt_mask, completion_mask))
        batch_size = batch_size or input_ids.shape[0]
        logps, entropies = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            generators = mask_generators(self.args.seed, step, iteration, rollouts[rows].tolist())
            draw = draw_masks(
                self.args.logp_estimator,
                input_ids[rows],
                prompt_mask[rows],
                completion_mask[rows],
                self.mask_token_id,
                generators,
                p_mask_prompt=self.args.p_mask_prompt,
                num_samples=self.args.mc_samples,
                block=None if self.block is None else (self.block.block_size, self.block.schedule),
            )
            passes = draw.noisy_ids.shape[0] // input_ids[rows].shape[0]
            seen = []
            if self.block is None:
                logits_fn = _recording_logits_fn(model, monte_carlo_copies(attention_mask[rows], passes), seen)
            else:
                logits_fn = _block_logits_fn(self.block, model, input_ids[rows], attention_mask[rows], seen)
            scores = score_draw(
                self.args.logp_estimator, logits_fn, input_ids[rows], completion_mask[rows], draw, shift=self.shift
            )
            if scores.dim() == 1:  # elbo: the completion's score at each of its tokens
                scores = scores.unsqueeze(1) * completion_mask[rows].to(scores.dtype)
            logps.append(scores)
            if compute_entropy:
                entropies.append(self._masked_entropy(seen[0], draw.masked, passes))
        logps, entropies = torch.cat(logps), torch.cat(entropies) if compute_entropy else None
        if self.block is not None:  # back to TRL's columns
            logps, entropies = (
                None if values is None else torch.zeros_like(values[:, :length]).scatter(1, order, values[:, :length])
                for values in (logps, entropies)
            )
        return logps[:, -logits_to_keep:], None if entropies is None else entropies[:, -logits_to_keep:], None

    def _masked_entropy(self, logits, masked, passes):
        """Entropy of the predicted token at each position, averaged over the passes that mask it [B, T]."""
        with torch.no_grad():
            if self.shift:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1) * masked
            rows = masked.shape[0] // passes
            return entropy.reshape(rows, passes, -1).sum(1) / masked.reshape(rows, passes, -1).sum(1).clamp(min=1)

    # ------------------------------------------------------------------------------------------------
    # Old and reference scores per iteration; the loss

    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        device = self.accelerator.device
        first = self.accelerator.process_index * len(inputs)
        rollouts = torch.arange(first, first + len(inputs))
        self._mask_context = (self._step, 0, rollouts)
        output = super()._generate_and_score_completions(inputs)
        iterations = self.num_iterations if training else 1
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        for key, model in (("old_per_token_logps", self.model), ("ref_per_token_logps", self.ref_model)):
            if key not in output:
                continue
            scores = [output[key]]
            for iteration in range(1, iterations):
                self._mask_context = (self._step, iteration, rollouts)
                scores.append(
                    self._reference_logps(model, input_ids, attention_mask, output["completion_ids"].shape[1])
                )
            output[key] = torch.stack(scores, dim=1)
        self._mask_context = None
        output["rollout_index"] = rollouts.to(device)
        output["rollout_step"] = torch.full_like(output["rollout_index"], self._step)
        if self.args.loss_type == "wd1":
            group_size = self.num_generations if training else self.num_generations_eval
            advantages = self.accelerator.gather(output["advantages"])
            weights = wd1_weights(advantages, group_size, psi=self.args.wd1_psi)
            output["wd1_weights"] = weights.reshape(self.accelerator.num_processes, -1)[self.accelerator.process_index]
        return output

    def _reference_logps(self, model, input_ids, attention_mask, logits_to_keep):
        """Scores of the old policy (`self.model`) or the reference without gradients; with LoRA and no reference
        model, as TRL: the policy with its `ref` adapter if it has one, else with its adapters off."""
        with torch.no_grad():
            if model is None:
                unwrapped = self.accelerator.unwrap_model(self.model)
                with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    return self._get_per_token_logps_and_entropies(
                        self.model, input_ids, attention_mask, logits_to_keep
                    )[0]
            return self._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep)[0]

    def _compute_loss(self, model, inputs):
        iteration = (self._step // self.args.steps_per_generation) % self.num_iterations if self.model.training else 0
        inputs = dict(inputs)
        for key in ("old_per_token_logps", "ref_per_token_logps"):
            if key in inputs:
                inputs[key] = inputs[key][:, iteration]
        self._mask_context = (int(inputs["rollout_step"][0]), iteration, inputs["rollout_index"].cpu())
        try:
            if self.args.loss_type == "wd1":
                return self._wd1_loss(model, inputs)
            return super()._compute_loss(model, inputs)
        finally:
            self._mask_context = None

    def _wd1_loss(self, model, inputs):
        """Σ_i (w⁻_i − w⁺_i) log π(o_i), scaled so that a whole generation batch gives wd1's mean over
        groups."""
        completion_mask = inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_mask.shape[1]
        )
        mask = completion_mask.to(logps.dtype)
        if self.args.logp_estimator == "elbo":  # the ELBO sits at every token: take it once
            sequence = (logps * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            sequence = (logps * mask).sum(1)
        training = self.model.training
        group_size = self.num_generations if training else self.num_generations_eval
        loss = (inputs["wd1_weights"] * sequence).sum() * group_size / len(sequence)
        mode = "train" if training else "eval"
        self._metrics[mode]["wd1/sequence_logp"].append(self.accelerator.gather(sequence.detach()).mean().item())
        return loss / (self.current_gradient_accumulation_steps if training else 1.0)
