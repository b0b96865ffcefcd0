"""Checkpoints in the layout of the SEDD authors' `louaaron/sedd-small`: a Hydra `config.json` and a DDiT state dict.

`config.json` holds the whole training config (`tokens`, `graph`, `noise`, `model` groups, no `model_type`); the
weights are `model.safetensors` or `pytorch_model.bin` with the DDiT's parameter names. The tokenizer is not part of
that layout (the authors use GPT-2's): it comes from the directory when present, else from `tokenizer_name`.
"""

import json
from pathlib import Path

import torch
from transformers import ByT5Tokenizer

from ..devices import torch_dtype
from ..diffusion_config import sedd_diffusion_config
from .ddit import DDiTConfig, DDiTModel
from .loading import load_saved_tokenizer
from .registry import CheckpointLoader, register_loader

HYDRA_GROUPS = ("tokens", "graph", "noise", "model")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
SEDD_MASK_TOKEN = "[MASK]"


def _hydra_config(path) -> dict | None:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return config if isinstance(config, dict) else None


def is_sedd_checkpoint(path) -> bool:
    """True for a directory whose config.json is a SEDD Hydra config (not a transformers config)."""
    config = _hydra_config(path)
    return config is not None and "model_type" not in config and all(group in config for group in HYDRA_GROUPS)


def ddit_config(hydra: dict, source: str = "config.json") -> DDiTConfig:
    """The DDiTConfig of a SEDD Hydra config; the absorbing graph adds one state (MASK = id `tokens`)."""
    graph, model = hydra["graph"]["type"], hydra["model"]
    if graph not in ("absorb", "uniform"):
        raise ValueError(f"{source}: graph.type {graph!r} is not supported; SEDD checkpoints use absorb or uniform.")
    if model.get("scale_by_sigma") and graph != "absorb":
        raise ValueError(f"{source}: model.scale_by_sigma is only defined for the absorbing graph.")
    return DDiTConfig(
        vocab_size=hydra["tokens"] + (1 if graph == "absorb" else 0),
        hidden_size=model["hidden_size"],
        cond_dim=model["cond_dim"],
        num_hidden_layers=model["n_blocks"],
        num_attention_heads=model["n_heads"],
        max_position_embeddings=model["length"],
        dropout=model.get("dropout", 0.1),
        scale_by_sigma=bool(model.get("scale_by_sigma", False)),
    )


def _state_dict(path: Path) -> dict:
    for name in WEIGHT_FILES:
        weights = path / name
        if weights.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(weights))
            return torch.load(weights, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no weights found; a SEDD checkpoint holds one of {', '.join(WEIGHT_FILES)}.")


def load_sedd_checkpoint(path, dtype=None, **_) -> DDiTModel:
    """A DDiTModel in eval mode with its `diffusion_config` (graph, noise, mask id) from a SEDD-layout directory.

    `dtype` is a torch dtype or its name ("auto" and None keep float32); other loader options are ignored.
    """
    path = Path(path)
    hydra = _hydra_config(path)
    config = ddit_config(hydra, str(path / "config.json"))
    config.name_or_path = str(path)  # what a LoRA adapter trained on it names as its base model
    graph, noise = hydra["graph"]["type"], hydra["noise"]
    config.diffusion_config = sedd_diffusion_config(
        graph=graph,
        noise=noise["type"],
        sigma_min=noise.get("sigma_min", 1e-4),
        sigma_max=noise.get("sigma_max", 20.0),
        mask_token_id=hydra["tokens"] if graph == "absorb" else None,
    )
    model = DDiTModel(config)
    state = _state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: the weights do not match the DDiT layout of config.json "
            f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})."
        )
    if torch_dtype(dtype) is not None:
        model = model.to(torch_dtype(dtype))
    return model.eval()


def load_sedd_tokenizer(path, tokenizer_name=None):
    """The checkpoint's tokenizer (from the directory, else `tokenizer_name`), with MASK as the absorbing id.

    The tokenizer must have exactly `tokens` entries, so that id `tokens` is the MASK state.
    """
    path = Path(path)
    hydra = _hydra_config(path)
    source = str(path) if any((path / name).is_file() for name in TOKENIZER_FILES) else tokenizer_name
    if source is None:
        raise ValueError(
            f"{path} holds no tokenizer (SEDD checkpoints do not ship one; louaaron/sedd-small uses "
            "GPT-2's): pass --tokenizer_name gpt2 or a directory holding that tokenizer."
        )
    if source == "byte":
        tokenizer = ByT5Tokenizer()
    else:
        tokenizer = load_saved_tokenizer(source)
    if hydra["graph"]["type"] == "absorb" and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": SEDD_MASK_TOKEN})
    expected = hydra["tokens"] + (1 if hydra["graph"]["type"] == "absorb" else 0)
    if len(tokenizer) != expected:
        raise ValueError(
            f"tokenizer {source} has {len(tokenizer)} entries with its mask token, but {path} was "
            f"trained with tokens={hydra['tokens']}: pass the tokenizer the checkpoint was trained with."
        )
    return tokenizer


# the tokenizer fits the checkpoint's ids (MASK at the absorbing id, before <DFF> is added): training keeps it
SEDD_LOADER = register_loader(
    CheckpointLoader(
        is_sedd_checkpoint,
        load_sedd_checkpoint,
        load_tokenizer=load_sedd_tokenizer,
        tokenizer_for_ids=load_sedd_tokenizer,
    )
)
