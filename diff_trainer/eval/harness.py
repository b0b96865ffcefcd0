"""An lm-evaluation-harness model for masked-diffusion checkpoints, registered as `diffusion_lm`.

- `loglikelihood(context, continuation)`: minus the Monte-Carlo ELBO NLL of the continuation given the context
  (`diffusion.elbo.elbo_nll_of`: `mc_num` masks with stratified counts, only the continuation masked, a generator
  seeded with `seed` for every request, so a score does not depend on batching or order; the LM head runs only at
  the masked positions, `diffusion.masked_head`). LLaDA uses 128 samples.
  `is_greedy` is whether one forward pass with the whole continuation masked predicts it exactly (argmax).
- `loglikelihood_rolling(text)`: the same bound for the whole text (given only the BOS prefix).
  A shift model (logits at i predict token i + 1) needs a token before the first one it scores: with an empty
  context or a whole text it is given the BOS, or the EOS when the tokenizer has no BOS (the token before a text in
  packed and EOS-padded rows; the harness's own `hf` model falls back to EOS the same way).
- `generate_until`: the checkpoint's sampler with the settings `diff-generate` uses (`sampling.settings.sampler_for`:
  mask id, shift, recorded stop ids, forbidden special tokens); `gen_length` (default: the task's max_gen_toks),
  `steps`, `block_length`, `threshold`, `guidance_scale`, `remasking`, `temperature` can be set in `model_args`.
  The text is cut at the first stop id, then at the first stop string.
- Chat (`--apply_chat_template`): `apply_chat_template` renders the harness's messages with the checkpoint
  tokenizer's template, the one training saved with it (`data.chat.render`, as `diff-generate --chat`); a checkpoint
  without one is a ValueError. A checkpoint with a template also stops a generation at the template's end-of-turn
  token (its replies end there). As the harness's `hf` model does, no BOS is put before a context that already
  starts with it (templates that write it, as LLaDA's).

Scores, `is_greedy` and the sampler come from the checkpoint's objective (`objectives`): a score-entropy checkpoint
is scored with its DWDSE bound (`mc_num` stratified times, only the continuation noised, seeded the same way) and
sampled with SEDD's sampler (`gen_length`, `steps`, `predictor` euler | analytic).

Causal checkpoints are not handled here: `diff-lm-eval` hands them to the harness's own `hf` model.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from diff_trainer.data.chat import end_of_turn_token, render
from diff_trainer.data.pipeline import bos_prefix
from diff_trainer.diffusion_config import read_diffusion_config
from diff_trainer.models.loading import load_checkpoint
from diff_trainer.objectives import objective_for
from diff_trainer.sampling.masked import SamplerConfig, context_length
from diff_trainer.sampling.sedd import SeddSamplerConfig
from diff_trainer.sampling.settings import check_sampler_settings, run_sampler, sampler_for, stop_ids

SAMPLER_SETTINGS = (
    "gen_length",
    "steps",
    "block_length",
    "threshold",
    "guidance_scale",
    "remasking",
    "temperature",
    "predictor",
)


def _optional(kind, value):
    """`value` as `kind`, keeping None (model_args arrive as strings from the command line)."""
    return None if value is None or value == "None" else kind(value)


def checkpoint_chat_template(tokenizer) -> str:
    """The chat template saved with the checkpoint's tokenizer; a ValueError saying what to do without one."""
    if not isinstance(tokenizer.chat_template, str):
        raise ValueError(
            f"--apply_chat_template: {tokenizer.name_or_path or 'the checkpoint'} has no chat template; fine-tune "
            "it on conversations with --chat_template (docs/chat.md), or evaluate without the flag."
        )
    return tokenizer.chat_template


@register_model("diffusion_lm")
class DiffusionLM(LM):
    """Scores and samples a masked-diffusion or score-entropy checkpoint for lm-evaluation-harness tasks."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model=None,
        tokenizer=None,
        mc_num: int = 128,
        batch_size: int = 32,
        seed: int = 1234,
        device: str = "cpu",
        dtype: str = "auto",
        gen_length=None,
        steps=None,
        block_length=None,
        threshold=None,
        guidance_scale=0.0,
        remasking: str = "low_confidence",
        temperature=0.0,
        predictor=None,
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise ValueError(
                f"diffusion_lm: unknown model_args {sorted(unknown)}; known: pretrained, mc_num, "
                f"batch_size, seed, device, dtype, {', '.join(SAMPLER_SETTINGS)}."
            )
        if model is None:
            if pretrained is None:
                raise ValueError("diffusion_lm needs pretrained=CHECKPOINT_DIRECTORY (or a loaded model).")
            model, tokenizer = load_checkpoint(pretrained, device=device, dtype=dtype)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.diffusion_config = read_diffusion_config(model.config)
        if self.diffusion_config is None:
            raise ValueError(
                f"{pretrained or 'the model'} is a causal checkpoint (no diffusion_config): evaluate it "
                "with the harness's `hf` model (diff-lm-eval does that by itself)."
            )
        self.mc_num, self.batch_size, self.seed = int(mc_num), int(batch_size), int(seed)
        if self.mc_num < 1 or self.batch_size < 1:
            raise ValueError(f"diffusion_lm: mc_num ({mc_num}) and batch_size ({batch_size}) must be at least 1.")
        # the bound, greedy check and sampler of the checkpoint's objective; the masked-diffusion ELBO applies the
        # LM head only at masked positions (exact; see diffusion/masked_head.py)
        self.objective = objective_for(self.diffusion_config).from_model(model)
        self.shift = bool(self.diffusion_config.get("shift_logits", False))
        self.sampler_settings = {
            "gen_length": _optional(int, gen_length),
            "steps": _optional(int, steps),
            "block_length": _optional(int, block_length),
            "threshold": _optional(float, threshold),
            "guidance_scale": float(guidance_scale),
            "remasking": remasking,
            "temperature": float(temperature),
            "predictor": predictor,
        }
        if predictor is not None and self.objective.sampler != "sedd":
            raise ValueError(
                "diffusion_lm: predictor is a setting of the SEDD sampler; this is a masked-diffusion checkpoint."
            )
        check_sampler_settings(model, **self.sampler_settings)  # wrong settings fail now, not mid-run
        if self.sampler_settings["gen_length"] is not None:
            self.sampler_config(self.sampler_settings["gen_length"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer's name, as the harness's `hf` model gives it (part of its request-cache key)."""
        return self.tokenizer.name_or_path.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The checkpoint's chat template (None when not asked for); lm-eval's template names do not apply: a
        checkpoint here has the one template it was trained with."""
        if chat_template is False or chat_template is None:
            return None
        if isinstance(chat_template, str):
            raise ValueError(
                f"diffusion_lm renders with the checkpoint's own chat template; drop the template name "
                f"({chat_template}) from --apply_chat_template."
            )
        return checkpoint_chat_template(self.tokenizer)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The messages rendered with the checkpoint's template: with the opening of the assistant's reply, or
        (False) going on from the last, prefilled assistant message."""
        return render(
            self.tokenizer,
            self.chat_template(True),
            chat_history,
            generation_prompt=add_generation_prompt,
            continue_final=not add_generation_prompt,
        )

    def end_of_turn_ids(self) -> tuple[int, ...]:
        """The id the chat template ends an assistant turn with; none for a checkpoint without a template."""
        template = self.tokenizer.chat_template
        if not isinstance(template, str):
            return ()
        return (self.tokenizer.convert_tokens_to_ids(end_of_turn_token(self.tokenizer, template)),)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _check_length(self, length: int, what: str) -> None:
        limit = context_length(self.model)
        if limit is not None and length > limit:
            raise ValueError(f"{what} is {length} tokens, more than the model's context of {limit} positions.")

    def continuation_nll(self, context_ids: list[int], continuation_ids: list[int]) -> float:
        """ELBO (SEDD: DWDSE) upper bound on −log p(continuation | context) in nats (seeded, so repeatable)."""
        ids = torch.tensor([context_ids + continuation_ids], device=self.device)
        self._check_length(ids.shape[1], "a request")
        maskable = torch.zeros_like(ids, dtype=torch.bool)
        maskable[:, len(context_ids) :] = True
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        nll = self.objective.elbo_nll(
            self.model, ids, None, maskable, self.mc_num, generator, chunk_size=self.batch_size
        )
        return float(nll[0])

    def one_step_greedy(self, context_ids: list[int], continuation_ids: list[int]) -> bool:
        """Whether one forward pass with the whole continuation masked predicts exactly the continuation (SEDD's
        uniform graph, which has no mask: whether the continuation is a fixed point)."""
        return self.objective.greedy(self.model, context_ids, continuation_ids)

    def _prefix(self, context: str = "") -> list[int]:
        """The ids before a context: [BOS] if the tokenizer has one (none when the context starts with it, as a chat
        template may write it); for a shift model without BOS, [EOS]."""
        prefix = bos_prefix(self.tokenizer)
        if prefix and context.startswith(self.tokenizer.bos_token):
            return []
        if self.shift and not prefix:  # something must predict the first scored token, e.g. of an empty context
            if self.tokenizer.eos_token_id is None:
                raise ValueError(
                    "a shift model scores a token from the position before it, and this tokenizer has "
                    "neither BOS nor EOS to put before a text."
                )
            prefix = [self.tokenizer.eos_token_id]
        return prefix

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            context_ids = self._prefix(context) + self._encode(context)
            continuation_ids = self._encode(continuation)
            if not continuation_ids:
                raise ValueError(f"empty continuation for context {context[-40:]!r}: nothing to score.")
            results.append(
                (
                    -self.continuation_nll(context_ids, continuation_ids),
                    self.one_step_greedy(context_ids, continuation_ids),
                )
            )
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args[:1]
            results.append(-self.continuation_nll(self._prefix(), self._encode(text)))
        return results

    def sampler_config(self, max_gen_toks: int) -> SamplerConfig | SeddSamplerConfig:
        """`sampler_for` (as diff-generate) with the model_args settings; gen_length from the task by default."""
        gen_length = self.sampler_settings["gen_length"] or max_gen_toks
        return sampler_for(
            self.model,
            self.tokenizer,
            extra_stop_ids=self.end_of_turn_ids(),
            **{**self.sampler_settings, "gen_length": gen_length},
        )

    def generate_until(self, requests) -> list[str]:
        """Samples up to `batch_size` prompts together (requests with the same max_gen_toks), in request order."""
        groups: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(int(request.args[1].get("max_gen_toks", 256)), []).append(index)
        outputs: list[str] = [""] * len(requests)
        stops = stop_ids(self.diffusion_config, self.tokenizer, self.end_of_turn_ids())
        for max_gen_toks, indices in groups.items():
            config = self.sampler_config(max_gen_toks)
            for first in range(0, len(indices), self.batch_size):
                batch = indices[first : first + self.batch_size]
                prompts = [self._prefix(requests[i].args[0]) + self._encode(requests[i].args[0]) for i in batch]
                self._check_length(max(map(len, prompts)) + config.gen_length, "a prompt + gen_length")
                result = run_sampler(self.model, prompts, config, seed=self.seed)
                for i, ids in zip(batch, result.generated.tolist()):
                    outputs[i] = self._cut(ids, requests[i].args[1].get("until") or [], stops)
        return outputs

    def _cut(self, ids: list[int], until: list[str] | str, stop) -> str:
        """Decoded ids up to the first stop id (`stop`: one id, several or None), then up to the first stop string."""
        stops = {stop} if isinstance(stop, int) else set(stop or ())
        ids = ids[: next((i for i, token in enumerate(ids) if token in stops), len(ids))]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in [until] if isinstance(until, str) else until:
            if stop:
                text = text.split(stop)[0]
        return text
