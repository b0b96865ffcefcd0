"""A random checkpoint written in exactly the louaaron/sedd-small layout loads and matches an independent forward."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import ByT5Tokenizer

from diff_trainer.models.ddit import DDiTModel
from diff_trainer.models.sedd_checkpoint import SEDD_LOADER, load_sedd_tokenizer
from models.ddit_reference import reference_forward

HIDDEN, COND, BLOCKS, HEADS = 32, 16, 2, 4


def sedd_small_layout(tokens: int, graph: str, seed: int = 0) -> tuple[dict, dict]:
    """(Hydra config, state dict) with sedd-small's keys and shapes (DESIGN.md §3b), sized down, random values."""
    rows = tokens + (1 if graph == "absorb" else 0)
    shapes = {
        "vocab_embed.embedding": [rows, HIDDEN],
        "sigma_map.mlp.0.weight": [COND, 256], "sigma_map.mlp.0.bias": [COND],
        "sigma_map.mlp.2.weight": [COND, COND], "sigma_map.mlp.2.bias": [COND],
        "output_layer.norm_final.weight": [HIDDEN],
        "output_layer.linear.weight": [rows, HIDDEN], "output_layer.linear.bias": [rows],
        "output_layer.adaLN_modulation.weight": [2 * HIDDEN, COND], "output_layer.adaLN_modulation.bias": [2 * HIDDEN],
    }
    for i in range(BLOCKS):
        shapes.update({
            f"blocks.{i}.norm1.weight": [HIDDEN], f"blocks.{i}.norm2.weight": [HIDDEN],
            f"blocks.{i}.attn_qkv.weight": [3 * HIDDEN, HIDDEN], f"blocks.{i}.attn_out.weight": [HIDDEN, HIDDEN],
            f"blocks.{i}.mlp.0.weight": [4 * HIDDEN, HIDDEN], f"blocks.{i}.mlp.0.bias": [4 * HIDDEN],
            f"blocks.{i}.mlp.2.weight": [HIDDEN, 4 * HIDDEN], f"blocks.{i}.mlp.2.bias": [HIDDEN],
            f"blocks.{i}.adaLN_modulation.weight": [6 * HIDDEN, COND],
            f"blocks.{i}.adaLN_modulation.bias": [6 * HIDDEN],
        })
    generator = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(shape, generator=generator) * 0.3 + (1.0 if "norm" in name else 0.0)
             for name, shape in shapes.items()}
    head_dim = HIDDEN // HEADS
    state["rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    hydra = {
        "ngpus": 4, "tokens": tokens,
        "training": {"batch_size": 512, "n_iters": 1300001, "ema": 0.9999},
        "data": {"train": "openwebtext", "valid": "wikitext103"},
        "graph": {"type": graph, "file": "data", "report_all": False},
        "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
        "sampling": {"predictor": "euler", "steps": 128, "noise_removal": True},
        "model": {"name": "small", "type": "ddit", "hidden_size": HIDDEN, "cond_dim": COND, "length": 64,
                  "n_blocks": BLOCKS, "n_heads": HEADS, "scale_by_sigma": graph == "absorb", "dropout": 0.1},
    }
    return hydra, state


def write_checkpoint(path, hydra, state, weights="model.safetensors"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hydra))
    if weights.endswith(".safetensors"):
        save_file(state, str(path / weights))
    else:
        torch.save(state, path / weights)
    return path


@pytest.mark.parametrize("graph,weights", [("absorb", "model.safetensors"), ("uniform", "pytorch_model.bin")])
def test_layout_loads_and_matches_reference(tmp_path, graph, weights):
    tokens = len(ByT5Tokenizer())
    hydra, state = sedd_small_layout(tokens, graph)
    path = write_checkpoint(tmp_path / "sedd", hydra, state, weights)
    assert SEDD_LOADER.matches(path)
    model = SEDD_LOADER.load(path)
    assert isinstance(model, DDiTModel) and not model.training
    config = model.config.diffusion_config
    assert config["objective"] == f"sedd_{graph}" and config["noise"] == "loglinear"
    assert config["mask_token_id"] == (tokens if graph == "absorb" else None)
    ids = torch.randint(0, tokens, (2, 9), generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.2, 1.7])
    expected = reference_forward(state, ids, sigma, HEADS, scale_by_sigma=graph == "absorb")
    assert torch.allclose(model(ids, sigma=sigma).logits.double(), expected, atol=1e-4, rtol=1e-4)
    tokenizer = load_sedd_tokenizer(path, "byte")
    assert len(tokenizer) == model.config.vocab_size
    if graph == "absorb":
        assert tokenizer.mask_token_id == tokens


def test_bad_checkpoints(tmp_path):
    tokens = len(ByT5Tokenizer())
    hydra, state = sedd_small_layout(tokens, "absorb")
    assert not SEDD_LOADER.matches(tmp_path)  # no config.json
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama", **hydra}))
    assert not SEDD_LOADER.matches(tmp_path / "hf")
    del state["blocks.1.norm2.weight"]
    broken = write_checkpoint(tmp_path / "broken", hydra, state)
    with pytest.raises(ValueError, match="missing: \\['blocks.1.norm2.weight'\\]"):
        SEDD_LOADER.load(broken)
    with pytest.raises(ValueError, match="pass --tokenizer_name gpt2"):
        load_sedd_tokenizer(broken)
    hydra["tokens"] = tokens + 5
    (broken / "config.json").write_text(json.dumps(hydra))
    with pytest.raises(ValueError, match="trained with tokens="):
        load_sedd_tokenizer(broken, "byte")
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(hydra))
    with pytest.raises(FileNotFoundError, match="no weights found"):
        SEDD_LOADER.load(empty)
