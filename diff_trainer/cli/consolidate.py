"""`diff-consolidate`: turn a sharded FSDP save into one `from_pretrained` directory.

    diff-consolidate outputs/run/checkpoint-500 outputs/run-500
    diff-consolidate outputs/run outputs/run-full --dtype bfloat16

CKPT is a `checkpoint-N` (or the final output directory) of a run under configs/accelerate/fsdp2.yaml: its
`pytorch_model_fsdp_0/` shards (any number of processes) are merged on one CPU process into the model described by
CKPT/config.json, which keeps `diffusion_config`; the tokenizer is copied. A LoRA policy (adapter_config.json in
CKPT) is merged into its base weights. OUT is written beside itself and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import torch

from diff_trainer.devices import DTYPE_CHOICES
from diff_trainer.models.loading import load_saved_tokenizer
from diff_trainer.training.sharding import SHARDED_WEIGHTS_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diff-consolidate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", metavar="CKPT", help="a sharded save: checkpoint-N or a run's output_dir")
    parser.add_argument("output", metavar="OUT", help="the directory to write (must not exist unless --overwrite)")
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto", help="dtype of the written weights (auto: that of the shards)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    parser.add_argument("--trust_remote_code", action="store_true", help="for architectures defined in the checkpoint")
    return parser


def merged_state_dict(shard_dir: str, scratch_parent: str) -> dict[str, torch.Tensor]:
    """The full state dict of a torch.distributed.checkpoint directory, read on this one process (through a
    scratch file in `scratch_parent`, which needs room for the full weights)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(dir=scratch_parent, prefix=".consolidate-") as scratch:
        path = os.path.join(scratch, "merged.pt")
        dcp_to_torch_save(shard_dir, path)
        state = torch.load(path, weights_only=True)
    return state.get("model", state)  # accelerate stores the model's entries under "model"


def build_model(checkpoint: str, dtype: torch.dtype, trust_remote_code: bool):
    """An empty model of the checkpoint's architecture (with its LoRA adapter when it has one)."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is not None:
        model = model_class._from_config(config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    if os.path.isfile(os.path.join(checkpoint, "adapter_config.json")):
        from peft import PeftConfig, get_peft_model

        model = get_peft_model(model, PeftConfig.from_pretrained(checkpoint))
    return model


def load_merged_weights(model, state_dict: dict[str, torch.Tensor], checkpoint: str) -> None:
    """Copy the merged weights in; every parameter must be covered (tied copies excepted) and none left over."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    loaded_storage = {tensor.data_ptr() for name, tensor in model.state_dict().items() if name in state_dict}
    tied = {name for name, tensor in model.state_dict().items() if tensor.data_ptr() in loaded_storage}
    missing = [name for name in missing if name not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint}: the shards do not match config.json's model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}); was the checkpoint written by a "
            f"different model or code version?"
        )


def consolidate(
    checkpoint: str, output: str, *, dtype: str = "auto", overwrite: bool = False, trust_remote_code: bool = False
) -> str:
    """Write OUT from the sharded save CKPT; returns OUT."""
    shard_dir = os.path.join(checkpoint, SHARDED_WEIGHTS_DIR)
    if not os.path.isdir(shard_dir):
        raise ValueError(
            f"{checkpoint} has no {SHARDED_WEIGHTS_DIR}/: it is not a sharded FSDP save "
            f"(a checkpoint with model.safetensors loads with from_pretrained as it is)."
        )
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise ValueError(
            f"{checkpoint} has shards but no config.json: copy the run's config.json (from its "
            f"output_dir or the starting checkpoint) into it and run again."
        )
    if os.path.exists(output) and not overwrite:
        raise ValueError(f"{output} exists: choose another OUT or pass --overwrite.")
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    state_dict = merged_state_dict(shard_dir, parent)
    shard_dtype = next(t.dtype for t in state_dict.values() if t.is_floating_point())
    model = build_model(checkpoint, shard_dtype if dtype == "auto" else getattr(torch, dtype), trust_remote_code)
    load_merged_weights(model, state_dict, checkpoint)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()

    partial = f"{output.rstrip(os.sep)}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    if any(name.startswith("tokenizer") for name in os.listdir(checkpoint)):
        load_saved_tokenizer(checkpoint, trust_remote_code=trust_remote_code).save_pretrained(partial)
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(partial, output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        consolidate(
            args.checkpoint,
            args.output,
            dtype=args.dtype,
            overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code,
        )
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
