"""One place that makes a model class loadable with the transformers Auto* factories."""

import itertools

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM


def register_auto_model(config_class, model_class) -> None:
    """Register `config_class` under its `model_type` with AutoConfig, and `model_class` with AutoModel and
    AutoModelForCausalLM (the class every diffusion checkpoint here is loaded with, causal or not)."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)


class OwnedWeightsMixin:
    """`from_pretrained` whose model computes exactly what the saved model computed.

    Loaded on CPU (seen with transformers 5.25, safetensors 0.8), weights stay views of the memory-mapped
    safetensors file at the file's offsets. A tensor after one with an odd number of elements (a bias over a
    13-state vocabulary) starts 4 bytes off a SIMD boundary, and the CPU matrix kernels then sum in another order:
    logits move by ~1e-5. Copying each CPU weight into memory of its own (64-byte aligned, as every fresh tensor
    is) gives back the saved model's kernels and its logits bit for bit.
    """

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True adds a dict
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                if tensor.device.type == "cpu":
                    tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
        return loaded
