"""Forwards of LLaDA and Dream written from their architecture descriptions, independently of transformers, to
check the converted models against (float32, explicit softmax attention over all positions)."""

import math

import torch


def rms_norm(x, weight, eps):
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rotate(x, theta):
    """Rotary embedding of [B, heads, T, D]: pair dimension j with j + D/2, angle position * theta^(-2j/D)."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    angles = (torch.arange(x.shape[2], dtype=torch.float64)[:, None] * frequencies[None]).float()
    cos, sin = angles.cos(), angles.sin()
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def full_attention(q, k, v):
    """Softmax attention over all positions (no causal mask); k/v heads shared by groups of query heads."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.softmax(-1) @ v


def llada_forward(weights: dict, config: dict, ids: torch.Tensor) -> torch.Tensor:
    """LLaDA's llama block, read off its description: pre-norm attention and SwiGLU(ff_proj, up_proj) MLP."""
    w = {name.removeprefix("model.transformer."): tensor for name, tensor in weights.items()}
    heads, kv_heads, eps = config["n_heads"], config["n_kv_heads"], config["rms_norm_eps"]
    batch, length = ids.shape
    x = w["wte.weight"][ids]
    for layer in range(config["n_layers"]):
        b = {name.removeprefix(f"blocks.{layer}."): t for name, t in w.items() if name.startswith(f"blocks.{layer}.")}
        h = rms_norm(x, b["attn_norm.weight"], eps)

        def split(t, n):
            return t.view(batch, length, n, -1).transpose(1, 2)

        q = rotate(split(h @ b["q_proj.weight"].T, heads), config["rope_theta"])
        k = rotate(split(h @ b["k_proj.weight"].T, kv_heads), config["rope_theta"])
        v = split(h @ b["v_proj.weight"].T, kv_heads)
        attended = full_attention(q, k, v).transpose(1, 2).reshape(batch, length, -1)
        x = x + attended @ b["attn_out.weight"].T
        h = rms_norm(x, b["ff_norm.weight"], eps)
        gate = torch.nn.functional.silu(h @ b["ff_proj.weight"].T)
        x = x + (gate * (h @ b["up_proj.weight"].T)) @ b["ff_out.weight"].T
    return rms_norm(x, w["ln_f.weight"], eps) @ w["ff_out.weight"].T


def dream_forward(weights: dict, config: dict, ids: torch.Tensor) -> torch.Tensor:
    """Qwen2's decoder without the causal mask: pre-norm attention (q/k/v with bias, o without) and SwiGLU."""
    heads, kv_heads, eps = config["num_attention_heads"], config["num_key_value_heads"], config["rms_norm_eps"]
    batch, length = ids.shape
    x = weights["model.embed_tokens.weight"][ids]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, weights[p + "input_layernorm.weight"], eps)

        def project(name, n):
            out = h @ weights[p + f"self_attn.{name}.weight"].T + weights[p + f"self_attn.{name}.bias"]
            return out.view(batch, length, n, -1).transpose(1, 2)

        q = rotate(project("q_proj", heads), config["rope_theta"])
        k = rotate(project("k_proj", kv_heads), config["rope_theta"])
        attended = full_attention(q, k, project("v_proj", kv_heads)).transpose(1, 2).reshape(batch, length, -1)
        x = x + attended @ weights[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gate = torch.nn.functional.silu(h @ weights[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ weights[p + "mlp.up_proj.weight"].T)) @ weights[p + "mlp.down_proj.weight"].T
    return rms_norm(x, weights["model.norm.weight"], eps) @ weights["lm_head.weight"].T
