"""transformers' TrainingArguments plus what every run of this project adds (resuming, the masked head)."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class RunArguments(TrainingArguments):
    """transformers' TrainingArguments plus how this project's runs continue."""

    def __post_init__(self):
        counts = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        super().__post_init__()

    resume: bool = field(
        default=False,
        metadata={"help": "Resume from the last checkpoint in --output_dir (start fresh if there is none)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an --output_dir that already holds a model or checkpoints, deleting its "
            "checkpoint-N directories (without it such a run is refused)."
        },
    )
    masked_head: bool | None = field(
        default=None,
        metadata={
            "help": "Diffusion and DPO: apply the model's LM head only at masked positions (the loss, ELBO and "
            "VRPO scores need no other logits); false computes the full [B, L, V] logits first. The loss "
            "is the same either way. Default: true."
        },
    )
