"""Training under sharding (accelerate's FSDP2 / DeepSpeed ZeRO-3): complete sharded saves and the frozen reference.

With FSDP's SHARDED_STATE_DICT the Trainer writes each process's shard of the weights (a `pytorch_model_fsdp_0`
directory) and nothing else, and its final `save_model` writes nothing at all. `ShardedSaveMixin` makes every such
save a self-describing directory: the shards plus config.json (with `diffusion_config`), the tokenizer and, for a
LoRA policy, the adapter config; `diff-consolidate` turns it into one `from_pretrained` directory.
"""

from __future__ import annotations

from transformers import Trainer

from .checkpoints import FiniteStepsMixin

# accelerate's name for the model's shard directory inside a checkpoint
SHARDED_WEIGHTS_DIR = "pytorch_model_fsdp_0"


def saves_sharded_weights(trainer) -> bool:
    """Whether the trainer runs FSDP with SHARDED_STATE_DICT (its saves hold shards, not model files)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    return trainer.is_fsdp_enabled and plugin is not None and "SHARDED_STATE_DICT" in str(plugin.state_dict_type)


class ShardedSaveMixin:
    """Trainer mixin: under FSDP sharded state dicts, `save_model` writes the shards, the config and the tokenizer."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if not saves_sharded_weights(self):
            return
        from accelerate.utils import save_fsdp_model

        output_dir = output_dir or self.args.output_dir
        if not _internal_call:  # a checkpoint gets the shards with its optimizer state; the final save needs them here
            save_fsdp_model(self.accelerator.state.fsdp_plugin, self.accelerator, self.model, output_dir)
        if self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            model.config.save_pretrained(output_dir)
            for adapter in getattr(model, "peft_config", {}).values():
                adapter.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)


def prepare_frozen_model(accelerator, model):
    """A frozen model (DPO's reference copy) placed like the trained one.

    FSDP2: sharded with the same plan as the policy (one unit per transformer block, same mixed precision), so a
    reference copy costs 1/N of its weights per process. DDP / one device: moved to the device. DeepSpeed: refused,
    since a ZeRO-3 model cannot run outside an engine; use a LoRA policy or precomputed reference scores there.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(
            "Under DeepSpeed the DPO reference cannot be a frozen copy: train with --use_lora (the "
            "reference is the policy without adapters), or use the FSDP2 config "
            "(configs/accelerate/fsdp2.yaml), which shards the reference copy too."
        )
    if getattr(accelerator, "is_fsdp2", False):
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, model)
    return accelerator.prepare_model(model, evaluation_mode=True)


class ShardedSaveTrainer(FiniteStepsMixin, ShardedSaveMixin, Trainer):
    """The plain Trainer (causal LM runs) with complete sharded saves."""
