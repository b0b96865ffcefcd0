"""Noise-level conditioning of an ordinary transformers LM: the added embedding, zero start, save and reload."""

import math

import torch
from transformers import AutoModelForCausalLM

import diff_trainer.models  # noqa: F401  registers the wrapper
from conftest import make_tiny_llama
from diff_trainer.models.time_conditioning import TimeConditionedLM


def reference_noise_embedding(mlp, sigma):
    """SiLU MLP of [cos(σ f_k), sin(σ f_k)], f_k = 10000^(−k/128), written independently."""
    k = torch.arange(128, dtype=torch.float64)
    angles = sigma.double()[:, None] * torch.exp(-math.log(10000.0) * k / 128)
    features = torch.cat([angles.cos(), angles.sin()], dim=1)
    hidden = features @ mlp[0].weight.double().T + mlp[0].bias.double()
    hidden = hidden * torch.sigmoid(hidden)
    return hidden @ mlp[2].weight.double().T + mlp[2].bias.double()


def test_wrapped_model_adds_noise_embedding(tmp_path):
    lm = make_tiny_llama(20)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    model = TimeConditionedLM.wrap(lm).eval()
    assert all(torch.equal(v, before[k]) for k, v in lm.state_dict().items())  # wrapping keeps the weights
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    sigma = torch.tensor([0.4, 3.0])
    plain = lm(input_ids=ids).logits.scatter(-1, ids[..., None], 0.0)
    assert torch.allclose(model(ids, sigma=sigma).logits, plain, atol=1e-6)  # zero-initialised: unchanged at start
    with torch.no_grad():
        model.noise_embedding.mlp[2].weight.normal_()
        model.noise_embedding.mlp[2].bias.normal_()
    embedded = (
        lm.get_input_embeddings()(ids) + reference_noise_embedding(model.noise_embedding.mlp, sigma).float()[:, None]
    )
    expected = lm(inputs_embeds=embedded).logits.scatter(-1, ids[..., None], 0.0)
    ours = model(ids, sigma=sigma).logits
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)

    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, TimeConditionedLM)
    assert loaded.lm.config.is_causal is False
    assert loaded.lm.config._attn_implementation == lm.config._attn_implementation == "sdpa"
    assert torch.equal(loaded(ids, sigma=sigma).logits, ours)  # same weights, same kernels: bit for bit
