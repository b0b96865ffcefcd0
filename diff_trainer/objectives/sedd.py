"""Score entropy (SEDD) as a training objective of `DiffusionTrainer`: model preparation, noising, loss, ELBO.

`--diffusion_objective sedd_absorb | sedd_uniform` trains with the DWDSE loss σ̄'(t) · Σ_i ℓ_i over the trainable
(label ≠ -100) positions, with the project's loss normalisations. A model that takes the noise level (DDiT, or any
LM wrapped in `TimeConditionedLM`) outputs log-scores; a time-blind model can learn the absorbing graph through the
RADD identity (its logits are read as p(x0 | unmasked)). Everything is recorded in `diffusion_config`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion.losses import denominator, diffusion_loss_sum, row_scales
from ..diffusion.masked_head import unwrapped_model
from ..diffusion.sedd import (
    SEDD_NOISES,
    dwdse_nll,
    get_graph,
    get_sedd_noise,
    radd_log_score,
    sample_sedd_times,
    score_entropy_terms,
    zero_input_entry,
)
from ..diffusion_config import SEDD_ABSORB, SEDD_UNIFORM, read_diffusion_config, sedd_diffusion_config
from ..models.bidirectional import make_bidirectional
from ..models.ddit import DDiTModel
from ..models.time_conditioning import TimeConditionedLM
from .base import Objective


def takes_noise_level(model) -> bool:
    """True for models called as model(input_ids, sigma=σ̄) (DDiT, TimeConditionedLM)."""
    return isinstance(model, (DDiTModel, TimeConditionedLM))


def prepare_sedd_model(
    model,
    tokenizer,
    *,
    objective: str,
    sedd_noise: str,
    sigma_min: float,
    sigma_max: float,
    sedd_scale_by_sigma: bool,
    time_eps: float,
    dff_token,
    auto_class: str,
    masked_lm: bool,
    row_packing=None,
):
    """The model to train with score entropy, with its `diffusion_config` written.

    The uniform graph (and `scale_by_sigma`) need the noise level: an ordinary LM is then wrapped in
    TimeConditionedLM (made bidirectional first). A time-blind LM learns the absorbing graph through RADD.
    """
    graph = "absorb" if objective == "sedd_absorb" else "uniform"
    if sedd_scale_by_sigma and graph != "absorb":
        raise ValueError(
            "--sedd_scale_by_sigma is defined for the absorbing graph only (SEDD): drop it for "
            "--diffusion_objective sedd_uniform."
        )
    mask_token_id = tokenizer.mask_token_id if graph == "absorb" else None
    check_fits_checkpoint(read_diffusion_config(model.config), graph, mask_token_id)
    if not takes_noise_level(model):
        make_bidirectional(model)
        if graph == "uniform" or sedd_scale_by_sigma:
            if masked_lm:
                raise ValueError(
                    f"--diffusion_objective {objective} needs a model that takes the noise level, and "
                    "--masked_lm encoders cannot be wrapped: use a causal LM family or --model_type ddit."
                )
            model = TimeConditionedLM.wrap(model, scale_by_sigma=sedd_scale_by_sigma)
            auto_class = "AutoModelForCausalLM"
    elif sedd_scale_by_sigma:
        model.config.scale_by_sigma = True
    if getattr(model.config, "scale_by_sigma", False) and graph != "absorb":
        raise ValueError(
            f"the model's config has scale_by_sigma, which only the absorbing graph allows, but the "
            f"objective is {objective}."
        )
    vocab_size = model.config.get_text_config().vocab_size
    if mask_token_id is not None and not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask token id {mask_token_id} is outside the model's {vocab_size} rows.")
    config = sedd_diffusion_config(
        graph=graph,
        noise=sedd_noise,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        mask_token_id=mask_token_id,
        time_eps=time_eps,
        dff_token=dff_token,
    )
    model.config.diffusion_config = {**config, "time_conditioned": takes_noise_level(model), "auto_class": auto_class}
    if row_packing is not None:  # as for masked diffusion: how the training rows were laid out
        model.config.diffusion_config["row_packing"] = row_packing
    model.config.is_causal = False
    return model


def check_fits_checkpoint(previous: dict | None, graph: str, mask_token_id) -> None:
    """Refuse to continue a diffusion checkpoint with another SEDD graph or another mask id than it learned."""
    if previous is None:
        return
    if previous.get("graph", graph) != graph:
        raise ValueError(
            f"the checkpoint was trained with the {previous['graph']} graph: continue it with "
            f"--diffusion_objective sedd_{previous['graph']}."
        )
    learned = previous.get("mask_token_id")
    if learned is not None and mask_token_id is not None and learned != mask_token_id:
        raise ValueError(
            f"the checkpoint's mask (absorbing) id is {learned}, but the tokenizer's mask token has id "
            f"{mask_token_id}: use the tokenizer the checkpoint was trained with."
        )


@dataclass(frozen=True)
class SeddObjective(Objective):
    """The graph, noise and parametrisation a SEDD checkpoint was built for (from its diffusion_config)."""

    names = (SEDD_ABSORB, SEDD_UNIFORM)
    title = "SEDD (score-entropy)"
    sampler = "sedd"

    graph: object
    noise: object
    time_conditioned: bool
    time_eps: float = 1e-3
    antithetic_time: bool = True

    @classmethod
    def from_diffusion_config(cls, diffusion_config: dict, num_states: int, antithetic_time: bool = True):
        graph = get_graph(diffusion_config["graph"], num_states, diffusion_config.get("mask_token_id"))
        noise = get_sedd_noise(
            diffusion_config["noise"],
            diffusion_config["sigma_min"],
            diffusion_config["sigma_max"],
            diffusion_config["time_eps"],
        )
        return cls(
            graph, noise, diffusion_config.get("time_conditioned", True), diffusion_config["time_eps"], antithetic_time
        )

    @classmethod
    def flags_in_use(cls, args) -> dict[str, bool]:
        return {
            "sedd_noise": args.sedd_noise != "loglinear",
            "sigma_min": args.sigma_min != 1e-4,
            "sigma_max": args.sigma_max != 20.0,
            "sedd_scale_by_sigma": args.sedd_scale_by_sigma,
        }

    @classmethod
    def check_arguments(cls, args) -> None:
        if args.sedd_noise not in SEDD_NOISES:
            raise ValueError(f"--sedd_noise must be one of {SEDD_NOISES}, got {args.sedd_noise!r}")
        if not 0 < args.sigma_min < args.sigma_max:
            raise ValueError(
                f"--sigma_min and --sigma_max must satisfy 0 < sigma_min < sigma_max, got "
                f"{args.sigma_min} and {args.sigma_max}."
            )

    @classmethod
    def settings(cls, args, name: str) -> dict:
        return {
            "objective": name,
            "sedd_noise": args.sedd_noise,
            "sigma_min": args.sigma_min,
            "sigma_max": args.sigma_max,
            "sedd_scale_by_sigma": args.sedd_scale_by_sigma,
            "time_eps": args.time_eps,
        }

    @classmethod
    def prepare_model(cls, model, tokenizer, settings: dict, *, masked_lm: bool, auto_class: str):
        return prepare_sedd_model(model, tokenizer, **settings, masked_lm=masked_lm, auto_class=auto_class)

    @classmethod
    def from_model(cls, model, args=None, prefix_shuffler=None) -> SeddObjective:
        """The checkpoint's graph and noise; `args` sets --antithetic_time (SEDD uses no prefix shuffling)."""
        config = unwrapped_model(model).config
        return cls.from_diffusion_config(
            read_diffusion_config(config),
            config.get_text_config().vocab_size,
            True if args is None else args.antithetic_time,
        )

    @property
    def train_noiser(self):
        return self

    @property
    def eval_noiser(self):
        return self

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        """Noise a batch of clean rows: the keys of noising.BatchNoiser, `sigma` per row, `loss_weight` = σ̄'."""
        clean, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
        maskable = labels != -100
        times = sample_sedd_times(
            len(clean), antithetic=self.antithetic_time, eps=self.time_eps, generator=generator, device=clean.device
        )
        sigma, rate = self.noise(times)
        noisy = self.graph.corrupt(clean, sigma, maskable, generator)
        return {
            "input_ids": noisy,
            "attention_mask": attention,
            "clean_ids": clean,
            "maskable": maskable,
            "masked": noisy != clean,
            "loss_weight": rate,
            "sigma": sigma,
        }

    def log_score(self, model, input_ids, sigma, attention_mask) -> torch.Tensor:
        """The model's log-scores [B, L, N]: its output, or RADD's reading of a time-blind model's logits."""
        if self.time_conditioned:
            return model(input_ids=input_ids, sigma=sigma, attention_mask=attention_mask).logits
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return radd_log_score(logits, sigma, self.graph.mask_token_id)

    def loss(
        self, model, inputs: dict, normalization: str, total_denominator=None, attention=None, with_logits: bool = False
    ):
        """(DWDSE numerator / denominator with the project's normalisation, log-scores)."""
        attention = inputs["attention_mask"] if attention is None else attention
        log_score = self.log_score(model, inputs["input_ids"], inputs["sigma"], attention)
        terms = score_entropy_terms(
            self.graph, log_score, inputs["sigma"], inputs["input_ids"], inputs["clean_ids"], inputs["maskable"]
        )
        numerator = diffusion_loss_sum(terms, inputs["loss_weight"], row_scales(normalization, inputs["maskable"]))
        if total_denominator is None:
            total_denominator = denominator(normalization, inputs["maskable"], inputs["masked"]).clamp(min=1)
        return numerator / total_denominator, log_score

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
        """DWDSE bound on −log p(trainable tokens | rest) per row, in nats (see diffusion.sedd.dwdse_nll)."""
        attention = self.copies_attention(input_ids, attention_mask, num_samples, attention_for)
        if attention is not None and chunk_size is not None:
            raise ValueError("the DWDSE bound is chunked only for rows without a padding mask.")
        return dwdse_nll(
            lambda x_t, sigma: self.log_score(model, x_t, sigma, attention),
            self.graph,
            self.noise,
            input_ids,
            maskable,
            num_samples,
            eps=self.time_eps,
            generator=generator,
            chunk_size=chunk_size,
        )

    @torch.no_grad()
    def greedy(self, model, context_ids: list[int], continuation_ids: list[int]) -> bool:
        """Absorbing graph: whether the log-scores of the fully masked continuation at full noise put the
        continuation first. Uniform graph (no mask): whether the clean continuation is a fixed point, i.e. no token
        of it has a replacement with log-score above 0 at the lowest noise level."""
        device = next(model.parameters()).device
        if self.graph.kind == "uniform":
            ids = torch.tensor([context_ids + continuation_ids], device=device)
            sigma = self.noise(torch.full((1,), self.time_eps, device=device))[0]
            log_score = zero_input_entry(self.log_score(model, ids, sigma, None), ids)
            return bool((log_score[0, len(context_ids) :].max(-1).values <= 0).all())
        mask_id = self.graph.mask_token_id
        ids = torch.tensor([context_ids + [mask_id] * len(continuation_ids)], device=device)
        sigma = self.noise(torch.ones(1, device=device))[0]
        log_score = self.log_score(model, ids, sigma, None)
        log_score[..., mask_id] = float("-inf")
        return log_score.argmax(-1)[0, len(context_ids) :].tolist() == continuation_ids
