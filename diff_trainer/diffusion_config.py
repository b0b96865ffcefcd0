"""The `diffusion_config` a diffusion checkpoint records in its config.json: objective names, reading, writing.

Everything downstream (trainers, samplers, the harness, the browser page) reads a checkpoint's settings from this
record and never guesses them again. This module imports nothing from the package.
"""

from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

MASKED = "masked_diffusion"
SEDD_ABSORB = "sedd_absorb"
SEDD_UNIFORM = "sedd_uniform"
# --diffusion_objective's short spelling of masked diffusion (its default); a checkpoint records MASKED
OBJECTIVE_ALIASES = {"masked": MASKED}
DEFAULT_OBJECTIVE = "masked"
# the transformers auto classes a checkpoint may be loaded with (recorded as diffusion_config["auto_class"])
AUTO_CLASS_NAMES = ("AutoModelForCausalLM", "AutoModelForMaskedLM")
MASKED_LM_CLASS_NAMES = frozenset(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())


def masked_lm_problem(model_type: str | None) -> str | None:
    """Why --masked_lm cannot load a model of `model_type` (transformers has no masked-LM head for it), else None."""
    if model_type is None or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return None
    return (
        f"--masked_lm loads an encoder with a masked-LM head (bert, roberta, modernbert, ...); {model_type} has "
        "none. Drop --masked_lm: --train_diff_model makes a decoder-only model bidirectional itself."
    )


def read_diffusion_config(config) -> dict | None:
    """The checkpoint's diffusion settings (a copy), or None for a plain causal LM."""
    diffusion_config = getattr(config, "diffusion_config", None)
    return dict(diffusion_config) if diffusion_config is not None else None


def auto_class_name(config, masked_lm: bool = False) -> str:
    """The auto class of a model: --masked_lm, else the one its diffusion_config records, else a masked LM for
    encoder architectures (BERT, ModernBERT, ...), else a causal LM."""
    if masked_lm:
        return "AutoModelForMaskedLM"
    recorded = (read_diffusion_config(config) or {}).get("auto_class")
    if recorded is not None:
        if recorded not in AUTO_CLASS_NAMES:
            raise ValueError(
                f"The checkpoint's diffusion_config names auto class {recorded!r}, which diff-trainer "
                f"does not load models with (known: {', '.join(AUTO_CLASS_NAMES)})."
            )
        return recorded
    if any(name in MASKED_LM_CLASS_NAMES for name in getattr(config, "architectures", None) or []):
        return "AutoModelForMaskedLM"
    return "AutoModelForCausalLM"


def write_diffusion_config(
    config,
    *,
    mask_token_id,
    shift_logits,
    noise_schedule,
    time_eps,
    dff_token,
    auto_class=None,
    row_packing=None,
    eos_token_ids=None,
):
    """Record in `config` (hence in config.json) that the checkpoint is a masked-diffusion LM, and how to load it.

    `eos_token_ids`: every id that ends a generation (LLaDA: EOS and EOT); None keeps the ones already recorded.
    """
    previous = read_diffusion_config(config) or {}
    if previous.get("shift_logits") and not shift_logits:
        raise ValueError(
            "This checkpoint is a diffusion model with shifted logits (logits at i predict token i+1, "
            "e.g. Dream): train it with --shift_logits."
        )
    if eos_token_ids is None:
        eos_token_ids = previous.get("eos_token_ids")
    vocab_size = config.get_text_config().vocab_size
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(
            f"mask_token_id {mask_token_id} is outside the model's vocabulary of {vocab_size} rows: resize the "
            "embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer))) after adding the mask token."
        )
    config.diffusion_config = {
        "objective": MASKED,
        "mask_token_id": int(mask_token_id),
        "shift_logits": bool(shift_logits),
        "noise_schedule": noise_schedule,
        "time_eps": float(time_eps),
        "dff_token": dff_token,
        "auto_class": auto_class or auto_class_name(config),
    }
    if row_packing is not None:  # packed, left or right (trained EOS padding): DPO's default padding follows it
        config.diffusion_config["row_packing"] = row_packing
    if eos_token_ids is not None:
        config.diffusion_config["eos_token_ids"] = [int(i) for i in eos_token_ids]
    config.is_causal = False
    return config


def sedd_diffusion_config(
    *, graph: str, noise: str, sigma_min: float, sigma_max: float, mask_token_id, time_eps: float = 1e-3, dff_token=None
) -> dict:
    """The `diffusion_config` of a score-entropy (SEDD) checkpoint: what the samplers and the bound read back."""
    return {
        "objective": f"sedd_{graph}",
        "graph": graph,
        "mask_token_id": None if mask_token_id is None else int(mask_token_id),
        "noise": noise,
        "sigma_min": float(sigma_min),
        "sigma_max": float(sigma_max),
        "time_eps": float(time_eps),
        "shift_logits": False,
        "dff_token": dff_token,
    }
