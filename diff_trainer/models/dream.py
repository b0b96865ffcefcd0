"""Dream (Dream-org/Dream-v0-Base-7B / -Instruct-7B) as a native transformers Qwen2 model.

Dream is Qwen2 with full attention (biased q/k/v projections, SwiGLU, RMSNorm, rotary embeddings, untied head),
stored under Qwen2's own weight names, so only the config changes. It was adapted from an autoregressive model and
keeps that model's convention: the logits at position i predict token i + 1 (`shift_logits`).
"""

from transformers import Qwen2Config

from .bidirectional import bidirectional_config

MODEL_TYPES = ("Dream", "dream")
MASK_TOKEN_ID = 151666  # Dream-7B's <|mask|>, used when config.json does not say
# Besides config.json's eos_token_id (<|endoftext|>), the Instruct chat template ends a turn with this token.
EXTRA_STOP_TOKENS = ("<|im_end|>",)
_WEIGHT_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")


def native_weight_name(name: str) -> str:
    """Dream's tensors already carry Qwen2's names (ValueError for anything else)."""
    if not name.startswith(_WEIGHT_PREFIXES):
        raise ValueError(f"{name!r} is not a weight of Dream's (Qwen2) layout.")
    return name


def native_config(raw: dict) -> Qwen2Config:
    """A bidirectional Qwen2Config for Dream's config.json (Qwen2's fields under model_type "Dream")."""
    if raw.get("use_sliding_window"):
        raise ValueError("This Dream config uses sliding-window attention, which Dream's released models do not.")
    if raw.get("rope_scaling"):
        raise ValueError(f"This Dream config scales its rotary embeddings ({raw['rope_scaling']}); not supported.")
    return bidirectional_config(
        Qwen2Config,
        raw,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
        hidden_act=raw.get("hidden_act", "silu"),
        max_position_embeddings=raw.get("max_position_embeddings", 32768),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        use_sliding_window=False,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )
