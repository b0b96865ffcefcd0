"""The sampler settings of a checkpoint, built in one place for every command and the harness, and the dispatcher.

`sampler_for(model, tokenizer, **overrides)` reads the recorded `diffusion_config` once: the sampler of its
objective (or `sampler="sedd"` for a masked-diffusion checkpoint read as an absorbing SEDD model, RADD), the mask id
and shift, the stop ids (the recorded `eos_token_ids`, e.g. LLaDA's EOS and end-of-turn, else the tokenizer's EOS)
and the special tokens a sampler must never commit. `run_sampler` samples with the loop the settings are for.
"""

from __future__ import annotations

from functools import partial

from ..diffusion.masked_head import unwrapped_model
from ..diffusion_config import read_diffusion_config
from ..objectives import objective_for
from .block import BlockSamplerConfig, sample_blocks
from .masked import GenerationResult, SamplerConfig, generate, special_token_ids_to_forbid
from .sedd import SeddSamplerConfig, sedd_generate

# Settings of the masked-diffusion sampler, with the values that mean "not given" (SEDD's samplers refuse others).
MASKED_SAMPLER_DEFAULTS = {
    "block_length": None,
    "threshold": None,
    "guidance_scale": 0.0,
    "remasking": "low_confidence",
    "temperature": 0.0,
    "eos_handling": None,
    "cache": "none",
}
SAMPLERS = {SamplerConfig: generate, SeddSamplerConfig: sedd_generate, BlockSamplerConfig: sample_blocks}


def stop_ids(diffusion_config: dict | None, tokenizer, extra: tuple[int, ...] = ()) -> tuple[int, ...] | int | None:
    """The ids that end a completion: the checkpoint's `eos_token_ids` (LLaDA: EOS and EOT), else the EOS, and
    `extra` ones (a chat template's end-of-turn token)."""
    recorded = (diffusion_config or {}).get("eos_token_ids")
    stops = tuple(recorded) if recorded else tokenizer.eos_token_id
    if not extra:
        return stops
    base = stops if isinstance(stops, tuple) else () if stops is None else (stops,)
    return tuple(dict.fromkeys(base + tuple(extra)))


def sampler_kind(diffusion_config: dict, sedd_predictor: str | None = None) -> str:
    """ "masked", "block" or "sedd": the sampler of the checkpoint's objective, "sedd" whenever a SEDD predictor is
    asked for."""
    return "sedd" if sedd_predictor is not None else objective_for(diffusion_config).sampler


def _recorded(checkpoint) -> tuple[dict | None, int | None]:
    """(diffusion_config, rows of the model's output) of a model, a model config or a diffusion_config dict."""
    if isinstance(checkpoint, dict):
        return dict(checkpoint), None
    config = unwrapped_model(checkpoint).config if hasattr(checkpoint, "config") else checkpoint
    return read_diffusion_config(config), config.get_text_config().vocab_size


def check_sampler_settings(checkpoint, *, predictor: str | None = None, **overrides) -> dict:
    """The checkpoint's `diffusion_config`, after refusing settings of the other sampler than the one it is sampled
    with (`predictor` asks for SEDD's); ValueError for a causal checkpoint."""
    diffusion_config, _ = _recorded(checkpoint)
    if diffusion_config is None:
        raise ValueError("a causal checkpoint (no diffusion_config) has no diffusion sampler.")
    if predictor is not None and objective_for(diffusion_config).sampler == "block":
        raise ValueError("a block-diffusion checkpoint is sampled block by block: SEDD's predictors do not apply.")
    if sampler_kind(diffusion_config, predictor) == "sedd":
        given = [
            name
            for name, default in MASKED_SAMPLER_DEFAULTS.items()
            if overrides.get(name) is not None and overrides[name] != default
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} are settings of the masked-diffusion sampler; this checkpoint is "
                "sampled with SEDD's sampler (its settings: gen_length, steps, predictor)."
            )
    return diffusion_config


def sampler_for(
    checkpoint, tokenizer, *, predictor: str | None = None, extra_stop_ids: tuple[int, ...] = (), **overrides
) -> SamplerConfig | SeddSamplerConfig:
    """The sampler settings of `checkpoint` (a model, its config, or for masked diffusion its diffusion_config) with
    `overrides` (None values: not given).

    `predictor` (euler | analytic) picks SEDD's sampler, also for a masked-diffusion checkpoint (RADD).
    `extra_stop_ids` end a completion besides the checkpoint's stop ids (a chat template's end of turn).
    `steps` defaults to `gen_length`. ValueError for a causal checkpoint and for settings of the other sampler.
    """
    diffusion_config = check_sampler_settings(checkpoint, predictor=predictor, **overrides)
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if "gen_length" in overrides and "steps" not in overrides:
        overrides["steps"] = overrides["gen_length"]
    if sampler_kind(diffusion_config, predictor) == "sedd":
        overrides = {name: value for name, value in overrides.items() if name not in MASKED_SAMPLER_DEFAULTS}
        num_states = _recorded(checkpoint)[1]
        if num_states is None:
            raise ValueError(
                "SEDD's sampler needs the model (or its config) for the number of states, not only its "
                "diffusion_config."
            )
        return SeddSamplerConfig.from_diffusion_config(
            diffusion_config,
            num_states,
            predictor=predictor or "euler",
            pad_token_id=tokenizer.pad_token_id,
            **overrides,
        )
    stops = stop_ids(diffusion_config, tokenizer, extra_stop_ids)
    config_class = SamplerConfig
    if sampler_kind(diffusion_config) == "block":  # sub-blocks of the whole block unless --block_length is given
        config_class = partial(BlockSamplerConfig, model_block_size=diffusion_config["block_size"])
        overrides.setdefault("block_length", diffusion_config["block_size"])
    return config_class(
        mask_token_id=diffusion_config["mask_token_id"],
        shift=bool(diffusion_config.get("shift_logits", False)),
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        forbidden_token_ids=special_token_ids_to_forbid(tokenizer, stops),
        **{"eos_handling": "stop" if tokenizer.eos_token_id is not None else "none", **overrides},
    )


def run_sampler(model, prompt_ids, config, suffix_ids=(), **options) -> GenerationResult:
    """Sample with the loop `config` is for: SEDD's (`sedd_generate`), the block sampler (`sample_blocks`) or the
    masked-diffusion one (`generate`)."""
    return SAMPLERS[type(config)](model, prompt_ids, config, suffix_ids=suffix_ids, **options)
