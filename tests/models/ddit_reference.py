"""An independent DDiT forward pass written from DESIGN.md §3b, shared by the DDiT and checkpoint tests."""

import math

import torch


def randomise(model, seed: int = 0):
    """Every parameter random (the zero-initialised adaLN and output layers would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator) * (0.3 if "norm" not in name else 1.0)
                + (1.0 if "norm" in name else 0.0)
            )
    return model


def reference_forward(state: dict, ids, sigma, heads: int, scale_by_sigma: bool, positions=None, key_mask=None):
    """SEDD's DDiT from its state dict, written independently (float64, explicit softmax attention)."""
    w = {k: v.double() for k, v in state.items()}
    batch, length = ids.shape
    half = 128
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    angles = sigma.double()[:, None] * freqs
    frequency = torch.cat([angles.cos(), angles.sin()], dim=1)
    hidden = frequency @ w["sigma_map.mlp.0.weight"].T + w["sigma_map.mlp.0.bias"]
    hidden = hidden * torch.sigmoid(hidden)
    c = hidden @ w["sigma_map.mlp.2.weight"].T + w["sigma_map.mlp.2.bias"]
    c = c * torch.sigmoid(c)  # SiLU

    def norm(x, weight):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * weight

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = w["vocab_embed.embedding"][ids]
    dim = x.shape[-1]
    head_dim = dim // heads
    pos = torch.arange(length, dtype=torch.float64).expand(batch, length) if positions is None else positions.double()
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    theta = pos[..., None] * inv_freq  # [B, L, d/2]

    def rope(t):  # t [B, L, H, d]; pairs (j, j + d/2) rotate by theta_j
        a, b = t[..., : head_dim // 2], t[..., head_dim // 2 :]
        cos, sin = theta.cos()[:, :, None], theta.sin()[:, :, None]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    block = 0
    while f"blocks.{block}.norm1.weight" in w:
        p = lambda n: w[f"blocks.{block}.{n}"]  # noqa: E731
        mod = c @ p("adaLN_modulation.weight").T + p("adaLN_modulation.bias")
        sh1, sc1, g1, sh2, sc2, g2 = [m[:, None] for m in mod.split(dim, dim=1)]
        h = norm(x, p("norm1.weight")) * (1 + sc1) + sh1
        qkv = (h @ p("attn_qkv.weight").T).reshape(batch, length, 3, heads, head_dim)
        q, k, v = rope(qkv[:, :, 0]), rope(qkv[:, :, 1]), qkv[:, :, 2]
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(head_dim)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
        att = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(batch, length, dim)
        x = x + g1 * (att @ p("attn_out.weight").T)
        h = norm(x, p("norm2.weight")) * (1 + sc2) + sh2
        h = gelu_tanh(h @ p("mlp.0.weight").T + p("mlp.0.bias")) @ p("mlp.2.weight").T + p("mlp.2.bias")
        x = x + g2 * h
        block += 1
    final = c @ w["output_layer.adaLN_modulation.weight"].T + w["output_layer.adaLN_modulation.bias"]
    shift, scale = final.split(dim, 1)
    x = norm(x, w["output_layer.norm_final.weight"]) * (1 + scale[:, None]) + shift[:, None]
    out = x @ w["output_layer.linear.weight"].T + w["output_layer.linear.bias"]
    if scale_by_sigma:
        out = out - torch.log(torch.exp(sigma.double()) - 1)[:, None, None] - math.log(out.shape[-1] - 1)
    for b in range(batch):
        for i in range(length):
            out[b, i, ids[b, i]] = 0.0
    return out
