"""benchmarks/memory_plan.py: parameter counts from a config and the bytes of each setup, by hand."""

import os
import sys

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
)
import memory_plan  # noqa: E402

TINY = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)


def test_shape_counts_the_parameters_lora_and_largest_block_of_the_real_model():
    config = LlamaConfig(**TINY)
    model = AutoModelForCausalLM.from_config(config)
    shape = memory_plan.model_shape(config)
    assert shape["parameters"] == sum(p.numel() for p in model.parameters())
    assert shape["block"] == sum(p.numel() for p in model.model.layers[0].parameters())
    # all-linear LoRA per rank: q (32+32), k (32+16), v (32+16), o (32+32), gate/up (32+64 each), down (64+32)
    assert shape["lora_per_rank"] == 2 * (64 + 48 + 48 + 64 + 96 + 96 + 96)


SHAPE = {"parameters": 1000, "lora_per_rank": 10, "block": 100}


@pytest.mark.parametrize(
    "lora, copy, strategy, expected",
    [
        (False, False, "DDP", (16_000, 0)),  # 4 + 4 + 8 bytes per parameter on every GPU
        (False, False, "FSDP2", (16_000 / 4 + 400, 0)),  # sharded over 4 GPUs + two gathered bf16 blocks
        (True, False, "DDP", (2 * 1000 + 16 * 20, 0)),  # bf16 base + r=2 adapters with AdamW
        (False, True, "DDP", (16_000 + 2000, 0)),  # + a bf16 reference copy
        (False, True, "FSDP2", ((16_000 + 2000) / 4 + 400, 0)),
        (False, False, "ZeRO-3 + offload", (2000 / 4 + 400, 16_000)),  # bf16 grads on GPU, states in CPU
    ],
)
def test_state_bytes_by_hand(lora, copy, strategy, expected):
    assert memory_plan.state_bytes(SHAPE, lora, copy, strategy, gpus=4, gpus_per_node=8, lora_rank=2) == pytest.approx(
        expected
    )


def test_zero3_with_a_reference_copy_is_marked_unsupported():
    table = memory_plan.plan_table({**SHAPE, "hidden": 8, "layers": 1, "vocab": 10, "intermediate": 16}, 8, 8, 16)
    copy_row = next(line for line in table.splitlines() if "reference copy" in line)
    assert copy_row.count("not supported") == 2
