"""LLaDA (GSAI-ML/LLaDA-8B-Base / -Instruct and the smaller LLaDA checkpoints) as a native transformers Llama.

LLaDA's "llama" block is a Llama decoder layer with full attention, under other names:

    model.transformer.wte                      -> model.embed_tokens
    model.transformer.blocks.N.attn_norm       -> model.layers.N.input_layernorm          (RMSNorm)
    model.transformer.blocks.N.{q,k,v}_proj    -> model.layers.N.self_attn.{q,k,v}_proj
    model.transformer.blocks.N.attn_out        -> model.layers.N.self_attn.o_proj
    model.transformer.blocks.N.ff_norm         -> model.layers.N.post_attention_layernorm (RMSNorm)
    model.transformer.blocks.N.ff_proj         -> model.layers.N.mlp.gate_proj            (the SiLU-activated half)
    model.transformer.blocks.N.up_proj         -> model.layers.N.mlp.up_proj
    model.transformer.blocks.N.ff_out          -> model.layers.N.mlp.down_proj
    model.transformer.ln_f                     -> model.norm
    model.transformer.ff_out                   -> lm_head                                 (untied)

Rotary embeddings rotate the two halves of each head (the same convention as transformers' Llama), so the
query and key weights are used as they are. Logits are not shifted: position i predicts token i.
"""

import re

from transformers import LlamaConfig

from .bidirectional import bidirectional_config

MODEL_TYPES = ("llada",)
MASK_TOKEN_ID = 126336  # LLaDA-8B's <|mdm_mask|>, used when config.json does not say
# Besides config.json's eos_token_id (<|endoftext|>), the Instruct chat template ends a turn with this token.
EXTRA_STOP_TOKENS = ("<|eot_id|>",)

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}
_TOP_NAMES = {"wte": "model.embed_tokens", "ln_f": "model.norm", "ff_out": "lm_head"}
_BLOCK_KEY = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)")
_TOP_KEY = re.compile(r"model\.transformer\.(\w+)\.(weight|bias)")

# Settings of LLaDA's config under which its block is exactly a Llama layer; anything else is refused.
_REQUIRED = {
    "block_type": "llama",
    "activation_type": "silu",
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "rope": True,
    "alibi": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "bias_for_layer_norm": False,
    "attention_layer_norm": False,
    "input_emb_norm": False,
    "scale_logits": False,
}


def native_weight_name(name: str) -> str:
    """The Llama parameter name of a LLaDA checkpoint tensor (ValueError for a name LLaDA's llama block lacks)."""
    if match := _BLOCK_KEY.fullmatch(name):
        layer, module, kind = match.groups()
        if module in _BLOCK_NAMES:
            return f"model.layers.{layer}.{_BLOCK_NAMES[module]}.{kind}"
    elif match := _TOP_KEY.fullmatch(name):
        module, kind = match.groups()
        if module in _TOP_NAMES:
            return f"{_TOP_NAMES[module]}.{kind}"
    raise ValueError(f"{name!r} is not a weight of LLaDA's llama block layout (model.transformer.*).")


def native_config(raw: dict) -> LlamaConfig:
    """A bidirectional LlamaConfig for LLaDA's config.json (as published: d_model, n_heads, mlp_hidden_size, ...)."""
    wrong = {key: raw[key] for key, expected in _REQUIRED.items() if key in raw and raw[key] != expected}
    if wrong:
        raise ValueError(f"This LLaDA config cannot be mapped onto a Llama layer: {wrong} (supported: {_REQUIRED}).")
    heads = raw["n_heads"]
    kv_heads = 1 if raw.get("multi_query_attention") else (raw.get("n_kv_heads") or heads)
    return bidirectional_config(
        LlamaConfig,
        raw,
        vocab_size=raw.get("embedding_size") or raw["vocab_size"],  # the rows of wte / ff_out
        hidden_size=raw["d_model"],
        intermediate_size=raw.get("mlp_hidden_size") or raw["mlp_ratio"] * raw["d_model"],
        num_hidden_layers=raw["n_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=raw["d_model"] // heads,
        hidden_act="silu",
        max_position_embeddings=raw.get("max_sequence_length", 4096),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-5),
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=bool(raw.get("weight_tying", False)),
    )
