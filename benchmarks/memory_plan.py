#!/usr/bin/env python
"""Per-GPU memory plan for full SFT, LoRA SFT and DPO under DDP, FSDP2, ZeRO-3 and ZeRO-3 + CPU offload.

    python benchmarks/memory_plan.py                               # the 1B and 8B tables of docs/scaling.md
    python benchmarks/memory_plan.py --config path/to/config.json --gpus 16 --micro_batch 2 --seq_len 4096

Parameter counts come from the model config (the model is built on the meta device, so nothing is allocated);
bytes per parameter follow the mixed-precision AdamW recipe the configs in configs/accelerate/ use:

    full fine-tuning: fp32 weights 4 + fp32 gradients 4 + Adam moments 8 = 16 bytes per parameter
    LoRA:             frozen base weights in bf16, 2 bytes per parameter; adapters 16 bytes per adapter parameter
    DPO reference:    copy = the base weights again in bf16 (2 bytes); LoRA = the policy with adapters off (0);
                      precomputed scores = nothing during training

DDP keeps all of it on every GPU; FSDP2 and ZeRO-3 divide it by the number of GPUs; ZeRO-3 + offload keeps
parameters and optimizer states in CPU memory (counted per node). Activations are listed separately for one
micro-batch with activation checkpointing: each layer's bf16 input kept for recomputation, one layer's working set,
and the logits (bf16, plus fp32 for the cross-entropy). The unsharded working set of FSDP2 / ZeRO-3 (one or two
transformer blocks gathered in bf16) is included in the sharded columns. Estimates, not measurements: allocator
fragmentation and communication buffers add a few GiB.
"""

import argparse
import json
import math

import torch

from common import markdown_table

GIB = 1024**3

# Shapes of the models the tables describe (no downloads needed): Llama-3.2-1B and LLaDA-8B (a Llama-style body).
BUILTIN_CONFIGS = {
    "1B (Llama-3.2-1B shape)": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "8B (LLaDA-8B shape)": dict(
        model_type="llama",
        vocab_size=126464,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        tie_word_embeddings=False,
    ),
}
STRATEGIES = ("DDP", "FSDP2", "ZeRO-3", "ZeRO-3 + offload")


def model_shape(config) -> dict:
    """Parameter count, LoRA (all-linear) parameters per rank, largest block size, and the dims activations need."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    lora_per_rank = sum(
        module.in_features + module.out_features
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    )
    block = max(sum(p.numel() for p in layer.parameters()) for layer in model.model.layers)
    return {
        "parameters": parameters,
        "lora_per_rank": lora_per_rank,
        "block": block,
        "hidden": config.hidden_size,
        "layers": config.num_hidden_layers,
        "vocab": config.vocab_size,
        "intermediate": config.intermediate_size,
    }


# (label, LoRA policy, frozen reference copy); a LoRA policy's reference is itself with adapters off.
SETUPS = (
    ("full SFT", False, False),
    ("LoRA SFT", True, False),
    ("DPO, full policy + reference copy", False, True),
    ("DPO, LoRA policy (LoRA reference)", True, False),
    ("DPO, full policy + precomputed reference scores", False, False),
)


def state_bytes(
    shape: dict, lora: bool, reference_copy: bool, strategy: str, gpus: int, gpus_per_node: int, lora_rank: int
) -> tuple:
    """(GPU bytes, CPU bytes per node) of weights, gradients, optimizer states and DPO reference for one setup."""
    n = shape["parameters"]
    adapters = shape["lora_per_rank"] * lora_rank
    trained = 2 * n + 16 * adapters if lora else 16 * n  # LoRA: bf16 frozen base + fp32 adapters with AdamW
    total = trained + (2 * n if reference_copy else 0)  # a frozen bf16 copy of the base weights
    if strategy == "DDP":
        return total, 0
    working_set = 2 * 2 * shape["block"]  # two gathered bf16 blocks (current + prefetched)
    if strategy in ("FSDP2", "ZeRO-3"):
        return total / gpus + working_set, 0
    # ZeRO-3 + offload: parameters and optimizer states in CPU memory; bf16 gradient partitions stay on the GPU
    gradients = 2 * (adapters if lora else n)
    nodes = math.ceil(gpus / gpus_per_node)
    return gradients / gpus + working_set, total / nodes


def activation_bytes(shape: dict, micro_batch: int, seq_len: int) -> int:
    """One micro-batch with activation checkpointing: bf16 layer inputs, one layer recomputed, the logits."""
    tokens = micro_batch * seq_len
    checkpoints = 2 * tokens * shape["hidden"] * shape["layers"]
    one_layer = 2 * tokens * (8 * shape["hidden"] + 3 * shape["intermediate"])  # q,k,v,o, norms, MLP in bf16
    logits = tokens * shape["vocab"] * (2 + 4 + 4)  # bf16 logits, fp32 copy for the loss, fp32 gradient
    return checkpoints + one_layer + logits


def plan_table(shape: dict, gpus: int, gpus_per_node: int, lora_rank: int) -> str:
    rows = []
    for label, lora, reference_copy in SETUPS:
        row = [label]
        for strategy in STRATEGIES:
            if reference_copy and strategy.startswith("ZeRO-3"):
                row.append(
                    "not supported: LoRA or FSDP2"
                )  # diff_trainer.training.sharding.prepare_frozen_model refuses it
                continue
            gpu, cpu = state_bytes(shape, lora, reference_copy, strategy, gpus, gpus_per_node, lora_rank)
            row.append(f"{gpu / GIB:.1f}" + (f" (+{cpu / GIB:.0f} CPU/node)" if cpu else ""))
        rows.append(row)
    return markdown_table(["setup (GiB per GPU)", *STRATEGIES], rows)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a model's config.json (default: the built-in 1B and 8B shapes)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs in the job")
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--lora_rank", type=int, default=16, help="LoRA r on all linear layers")
    parser.add_argument("--micro_batch", type=int, default=1, help="sequences per GPU per micro-batch")
    parser.add_argument("--seq_len", type=int, default=4096)
    return parser.parse_args()


def main():
    from transformers import AutoConfig

    args = parse_args()
    if args.config:
        with open(args.config, encoding="utf-8") as handle:
            settings = json.load(handle)
        configs = {args.config: AutoConfig.for_model(**settings)}
    else:
        configs = {name: AutoConfig.for_model(**settings) for name, settings in BUILTIN_CONFIGS.items()}
    print(
        f"{args.gpus} GPUs ({args.gpus_per_node} per node), AdamW with bf16 mixed precision, LoRA r "
        f"{args.lora_rank} on all linear layers; activations for {args.micro_batch}×{args.seq_len} tokens per GPU.\n"
    )
    for name, config in configs.items():
        shape = model_shape(config)
        print(f"### {name}: {shape['parameters'] / 1e9:.2f}B parameters\n")
        print(plan_table(shape, args.gpus, args.gpus_per_node, args.lora_rank))
        activations = activation_bytes(shape, args.micro_batch, args.seq_len)
        print(
            f"\nplus activations per GPU (any strategy, activation checkpointing): {activations / GIB:.1f} GiB; "
            f"DPO runs 2·n masked copies per pair through the policy (and the reference without gradients).\n"
        )


if __name__ == "__main__":
    main()
