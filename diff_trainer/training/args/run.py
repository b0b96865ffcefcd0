"""transformers' TrainingArguments plus what every run of this project adds (resuming, the masked head)."""

from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments


@dataclass
class RunArguments(TrainingArguments):
    """transformers' TrainingArguments plus how this project's runs continue."""

    resume: bool = field(
        default=False, metadata={"help": "Resume from the last checkpoint in --output_dir (start fresh if there is none)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output_dir that already holds a model or checkpoints, deleting its "
                  "checkpoint-N directories (without it such a run is refused)."},
    )
    masked_head: Optional[bool] = field(
        default=None,
        metadata={"help": "Diffusion and DPO: apply the model's LM head only at masked positions (the loss, ELBO and "
                          "VRPO scores need no other logits); false computes the full [B, L, V] logits first. The loss "
                          "is the same either way. Default: true."},
    )
