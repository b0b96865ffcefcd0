"""Where and in which precision a command runs a checkpoint: `--device` and `--dtype` resolved to torch objects.

resolve_device("auto")                     # cuda:0 when a GPU is visible, else cpu
resolve_dtype("auto", device, "bfloat16")  # bfloat16 on a GPU, float32 on the CPU
"""

from __future__ import annotations

import json
import os

import torch

DEVICE_CHOICES_HELP = "auto (a GPU when one is visible), cpu, cuda or cuda:N"
DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
HALF_DTYPES = (torch.bfloat16, torch.float16)


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device named by a --device value; ValueError when it is unknown or not present."""
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use {DEVICE_CHOICES_HELP}.") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"--device {name!r} is not supported: use {DEVICE_CHOICES_HELP}.")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to torch here; use --device cpu (or auto).")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible "
            f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})."
        )
    return torch.device("cuda", index)


def torch_dtype(value) -> torch.dtype | None:
    """The torch dtype of a torch dtype or a name ("bfloat16", "torch.bfloat16"); None for None and "auto" (keep the
    stored one). ValueError for anything else."""
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return None if value == "auto" else value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"Unknown dtype {value!r}: use float32, bfloat16, float16 or auto.")
    return dtype


def resolve_dtype(name: str, device: torch.device, checkpoint_dtype=None) -> torch.dtype:
    """The torch dtype of a --dtype value on `device`.

    auto: on a GPU the checkpoint's own dtype (float16 in place of bfloat16 on GPUs without bfloat16, float32
    when the checkpoint records none); on the CPU float32, since half-precision matmuls are slow there.
    """
    if name not in DTYPE_CHOICES:
        raise ValueError(f"--dtype {name!r} is not one of {', '.join(DTYPE_CHOICES)}.")
    if name != "auto":
        return getattr(torch, name)
    stored = torch_dtype(checkpoint_dtype)
    if device.type != "cuda" or stored not in HALF_DTYPES:
        return torch.float32
    if stored == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float16
    return stored


def _read_json(path: str) -> dict | None:
    """The file's JSON object; None when it is missing or broken (the checkpoint loader then names the file)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (ValueError, UnicodeDecodeError):
        return None
    return content if isinstance(content, dict) else None


def checkpoint_dtype(path: str) -> torch.dtype | None:
    """The dtype a checkpoint directory records in its config.json (`dtype`, or v4's `torch_dtype`), or None.

    An adapter-only LoRA directory without config.json answers with its base model's dtype.
    """
    config = _read_json(os.path.join(path, "config.json"))
    if config is None:
        adapter = _read_json(os.path.join(path, "adapter_config.json")) or {}
        base = adapter.get("base_model_name_or_path")
        return checkpoint_dtype(base) if base and os.path.isdir(base) else None
    return torch_dtype(config.get("dtype") or config.get("torch_dtype"))
