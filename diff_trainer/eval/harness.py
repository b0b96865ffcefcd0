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
- `generate_until`: `diff_trainer.sampling.generate` with the checkpoint's mask id and shift flag; `gen_length`
  (default: the task's max_gen_toks), `steps`, `block_length`, `threshold`, `guidance_scale`, `remasking`,
  `temperature` can be set in `model_args`. The text is cut at the first stop string.

Score-entropy (SEDD) checkpoints are scored with their DWDSE bound instead (`diffusion.sedd.dwdse_nll`: `mc_num`
stratified times, only the continuation noised, seeded the same way) and sampled with `sedd_sampling.sedd_generate`
(`gen_length`, `steps`, `predictor` euler | analytic). Their `is_greedy`: for the absorbing graph, whether the
log-scores of the fully masked continuation put the continuation first; for the uniform graph, whether the clean
continuation is a fixed point (no token of it has a more likely replacement at the lowest noise level).

Causal checkpoints are not handled here: `diff-lm-eval` hands them to the harness's own `hf` model.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from diff_trainer.data.pipeline import bos_prefix
from diff_trainer.diffusion.elbo import elbo_nll_of
from diff_trainer.diffusion.masked_head import MaskedHead, masked_ce_fn, unwrapped_model
from diff_trainer.diffusion.sedd import SEDD_OBJECTIVES, dwdse_nll, zero_input_entry
from diff_trainer.modeling import load_checkpoint, read_diffusion_config
from diff_trainer.sampling import SamplerConfig, context_length
from diff_trainer.sedd_objective import SeddObjective
from diff_trainer.sedd_sampling import SeddSamplerConfig, run_sampler

SAMPLER_SETTINGS = ("gen_length", "steps", "block_length", "threshold", "guidance_scale", "remasking", "temperature",
                    "predictor")
MASKED_SAMPLER_DEFAULTS = {"block_length": None, "threshold": None, "guidance_scale": 0.0,
                           "remasking": "low_confidence", "temperature": 0.0}


def _optional(kind, value):
    """`value` as `kind`, keeping None (model_args arrive as strings from the command line)."""
    return None if value is None or value == "None" else kind(value)


@register_model("diffusion_lm")
class DiffusionLM(LM):
    """Scores and samples a masked-diffusion or score-entropy checkpoint for lm-evaluation-harness tasks."""

    def __init__(self, pretrained: str | None = None, *, model=None, tokenizer=None, mc_num: int = 128,
                 batch_size: int = 32, seed: int = 1234, device: str = "cpu", dtype: str = "auto",
                 gen_length=None, steps=None, block_length=None, threshold=None, guidance_scale=0.0,
                 remasking: str = "low_confidence", temperature=0.0, predictor=None, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"diffusion_lm: unknown model_args {sorted(unknown)}; known: pretrained, mc_num, "
                             f"batch_size, seed, device, dtype, {', '.join(SAMPLER_SETTINGS)}.")
        if model is None:
            if pretrained is None:
                raise ValueError("diffusion_lm needs pretrained=CHECKPOINT_DIRECTORY (or a loaded model).")
            model, tokenizer = load_checkpoint(pretrained, device=device, dtype=dtype)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.diffusion_config = read_diffusion_config(model.config)
        if self.diffusion_config is None:
            raise ValueError(f"{pretrained or 'the model'} is a causal checkpoint (no diffusion_config): evaluate it "
                             "with the harness's `hf` model (diff-lm-eval does that by itself).")
        self.mc_num, self.batch_size, self.seed = int(mc_num), int(batch_size), int(seed)
        if self.mc_num < 1 or self.batch_size < 1:
            raise ValueError(f"diffusion_lm: mc_num ({mc_num}) and batch_size ({batch_size}) must be at least 1.")
        self.num_states = model.config.get_text_config().vocab_size
        # score entropy (SEDD): its DWDSE bound and sampler replace the masked ones; None for masked diffusion
        self.sedd = SeddObjective.from_diffusion_config(self.diffusion_config, self.num_states) \
            if self.diffusion_config.get("objective") in SEDD_OBJECTIVES else None
        self.mask_token_id = self.diffusion_config.get("mask_token_id")  # None for SEDD's uniform graph
        self.shift = bool(self.diffusion_config.get("shift_logits", False))
        # the ELBO applies the LM head only at masked positions (exact; see diffusion/masked_head.py)
        has_head = self.sedd is None and unwrapped_model(model).get_output_embeddings() is not None
        self.head = MaskedHead(model) if has_head else None
        self.sampler_settings = self._settings_for_sampler({
            "gen_length": _optional(int, gen_length), "steps": _optional(int, steps),
            "block_length": _optional(int, block_length), "threshold": _optional(float, threshold),
            "guidance_scale": float(guidance_scale), "remasking": remasking, "temperature": float(temperature)},
            predictor)
        if self.sampler_settings["gen_length"] is not None:  # a wrong combination fails now, not mid-run
            self.sampler_config(self.sampler_settings["gen_length"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _settings_for_sampler(self, masked: dict, predictor) -> dict:
        """The model_args settings of this checkpoint's sampler: `masked` (the masked sampler's) as they are, or for
        a SEDD checkpoint gen_length, steps and `predictor`; a setting of the other sampler is refused."""
        if self.sedd is None:
            if predictor is not None:
                raise ValueError("diffusion_lm: predictor is a setting of the SEDD sampler; this is a "
                                 "masked-diffusion checkpoint.")
            return masked
        given = [name for name, default in MASKED_SAMPLER_DEFAULTS.items() if masked[name] != default]
        if given:
            raise ValueError(f"diffusion_lm: {', '.join(given)} are settings of the masked-diffusion sampler; this "
                             "is a SEDD checkpoint (its settings: gen_length, steps, predictor).")
        return {"gen_length": masked["gen_length"], "steps": masked["steps"], "predictor": predictor or "euler"}

    def _masked_ce(self, noisy: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Σ cross-entropy over the masked positions of each noisy row, `batch_size` rows per forward pass."""
        chunk_ce = masked_ce_fn(self.head, lambda rows: self.model(input_ids=rows).logits, self.shift)
        size = self.batch_size
        return torch.cat([chunk_ce(*chunk) for chunk in zip(noisy.split(size), targets.split(size), masked.split(size))])

    def _check_length(self, length: int, what: str) -> None:
        limit = context_length(self.model)
        if limit is not None and length > limit:
            raise ValueError(f"{what} is {length} tokens, more than the model's context of {limit} positions.")

    def _sedd_log_score(self, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.sedd.log_score(self.model, noisy, sigma, None)

    def continuation_nll(self, context_ids: list[int], continuation_ids: list[int]) -> float:
        """ELBO (SEDD: DWDSE) upper bound on −log p(continuation | context) in nats (seeded, so repeatable)."""
        ids = torch.tensor([context_ids + continuation_ids], device=self.device)
        self._check_length(ids.shape[1], "a request")
        maskable = torch.zeros_like(ids, dtype=torch.bool)
        maskable[:, len(context_ids):] = True
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        if self.sedd is not None:
            nll = dwdse_nll(self._sedd_log_score, self.sedd.graph, self.sedd.noise, ids, maskable, self.mc_num,
                            eps=self.sedd.time_eps, generator=generator, chunk_size=self.batch_size)
        else:
            nll = elbo_nll_of(self._masked_ce, ids, maskable, self.mask_token_id, self.mc_num, generator=generator)
        return float(nll[0])

    @torch.no_grad()
    def one_step_greedy(self, context_ids: list[int], continuation_ids: list[int]) -> bool:
        """Whether one forward pass with the whole continuation masked predicts exactly the continuation (SEDD's
        uniform graph, which has no mask: whether the continuation is a fixed point)."""
        if self.sedd is not None and self.sedd.graph.kind == "uniform":
            return self._uniform_fixed_point(context_ids, continuation_ids)
        ids = torch.tensor([context_ids + [self.mask_token_id] * len(continuation_ids)], device=self.device)
        if self.sedd is not None:  # absorbing graph: the log-scores of the masked positions at full noise
            sigma = self.sedd.noise(torch.ones(1, device=self.device))[0]
            log_score = self._sedd_log_score(ids, sigma)
            log_score[..., self.mask_token_id] = float("-inf")
            return log_score.argmax(-1)[0, len(context_ids):].tolist() == continuation_ids
        predicted = self.model(input_ids=ids).logits.argmax(-1)[0]
        if self.shift:  # logits at i predict token i + 1
            predicted = torch.cat([predicted[:1], predicted[:-1]])
        return predicted[len(context_ids):].tolist() == continuation_ids

    def _uniform_fixed_point(self, context_ids: list[int], continuation_ids: list[int]) -> bool:
        """Whether no continuation token has a replacement with log-score above 0 at the lowest noise level."""
        ids = torch.tensor([context_ids + continuation_ids], device=self.device)
        sigma = self.sedd.noise(torch.full((1,), self.sedd.time_eps, device=self.device))[0]
        log_score = zero_input_entry(self._sedd_log_score(ids, sigma), ids)
        return bool((log_score[0, len(context_ids):].max(-1).values <= 0).all())

    def _prefix(self) -> list[int]:
        """The ids before every context: [BOS] if the tokenizer has one; for a shift model without BOS, [EOS]."""
        prefix = bos_prefix(self.tokenizer)
        if self.shift and not prefix:  # something must predict the first scored token, e.g. of an empty context
            if self.tokenizer.eos_token_id is None:
                raise ValueError("a shift model scores a token from the position before it, and this tokenizer has "
                                 "neither BOS nor EOS to put before a text.")
            prefix = [self.tokenizer.eos_token_id]
        return prefix

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            context_ids = self._prefix() + self._encode(context)
            continuation_ids = self._encode(continuation)
            if not continuation_ids:
                raise ValueError(f"empty continuation for context {context[-40:]!r}: nothing to score.")
            results.append((-self.continuation_nll(context_ids, continuation_ids),
                            self.one_step_greedy(context_ids, continuation_ids)))
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args[:1]
            results.append(-self.continuation_nll(self._prefix(), self._encode(text)))
        return results

    def sampler_config(self, max_gen_toks: int) -> SamplerConfig | SeddSamplerConfig:
        """The checkpoint's mask id and shift flag (SEDD: graph and noise) with the model_args settings (gen_length
        from the task)."""
        settings = dict(self.sampler_settings)
        gen_length = settings.pop("gen_length") or max_gen_toks
        steps = settings.pop("steps") or gen_length
        if self.sedd is not None:
            return SeddSamplerConfig.from_diffusion_config(self.diffusion_config, self.num_states,
                                                           gen_length=gen_length, steps=steps,
                                                           pad_token_id=self.tokenizer.pad_token_id, **settings)
        eos = self.tokenizer.eos_token_id
        return SamplerConfig(mask_token_id=self.mask_token_id, shift=self.shift, gen_length=gen_length, steps=steps,
                             eos_token_id=eos, eos_handling="stop" if eos is not None else "none",
                             pad_token_id=self.tokenizer.pad_token_id, **settings)

    def generate_until(self, requests) -> list[str]:
        """Samples up to `batch_size` prompts together (requests with the same max_gen_toks), in request order."""
        groups: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(int(request.args[1].get("max_gen_toks", 256)), []).append(index)
        outputs: list[str] = [""] * len(requests)
        for max_gen_toks, indices in groups.items():
            config = self.sampler_config(max_gen_toks)
            for first in range(0, len(indices), self.batch_size):
                batch = indices[first:first + self.batch_size]
                prompts = [self._prefix() + self._encode(requests[i].args[0]) for i in batch]
                self._check_length(max(map(len, prompts)) + config.gen_length, "a prompt + gen_length")
                result = run_sampler(self.model, prompts, config, seed=self.seed)
                for i, ids in zip(batch, result.generated.tolist()):
                    outputs[i] = self._cut(ids, requests[i].args[1].get("until") or [])
        return outputs

    def _cut(self, ids: list[int], until: list[str] | str) -> str:
        """Decoded ids up to the first EOS, then up to the first stop string."""
        if self.tokenizer.eos_token_id in ids:
            ids = ids[:ids.index(self.tokenizer.eos_token_id)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in [until] if isinstance(until, str) else until:
            if stop:
                text = text.split(stop)[0]
        return text
