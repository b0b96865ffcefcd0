"""Shared fixtures: a byte-level tokenizer and tiny randomly initialised models (no downloads)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)

DFF = "<DFF>"
MASK = "<|mdm_mask|>"


def make_byte_tokenizer(dff: bool = True, mask: bool = True):
    """ByT5's byte tokenizer (needs no files) with <DFF> and the mask token as single special ids."""
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    extra = [t for t, keep in ((DFF, dff), (MASK, mask)) if keep]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    if mask:
        tokenizer.mask_token = MASK
    return tokenizer


def make_tiny_llama(vocab_size: int, bidirectional: bool = True, seed: int = 0, **overrides):
    """A 2-layer Llama with hidden size 32, randomly initialised from `seed`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
    )
    settings.update(overrides)
    config = LlamaConfig(**settings)
    config.is_causal = not bidirectional
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def byte_tokenizer():
    return make_byte_tokenizer()


@pytest.fixture
def tiny_llama(byte_tokenizer):
    return make_tiny_llama(len(byte_tokenizer))
