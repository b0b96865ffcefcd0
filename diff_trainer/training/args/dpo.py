"""VRPO / diffusion DPO arguments (run_diffusion_dpo.py), TRL's DPOConfig in spirit."""

from dataclasses import dataclass, field

from .run import RunArguments


@dataclass
class DPOTrainingArguments(RunArguments):
    """VRPO / diffusion DPO settings (LLaDA 1.5: beta 0.2, sft_weight 0.05, mc_samples 8), read as self.args.beta."""

    beta: float = field(default=0.2, metadata={"help": "Inverse temperature of the DPO loss."})
    sft_weight: float = field(
        default=0.05, metadata={"help": "Weight of the masked-diffusion (SFT) loss on the chosen response; 0 = off."}
    )
    mc_samples: int = field(
        default=8, metadata={"help": "Monte-Carlo budget n per response: n stratified mask counts, one mask each."}
    )
    antithetic_sampling: bool = field(
        default=True,
        metadata={"help": "Policy and reference see the same masks (VRPO). false: independent masks (ablation)."},
    )
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Frozen reference checkpoint; default: the policy's starting point."}
    )
    precompute_ref_scores: bool = field(
        default=False,
        metadata={
            "help": "Score the pairs with the reference once before training, store the scores with the "
            "dataset and keep no reference model. Masks are then the same in every epoch."
        },
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Turn dropout off in policy and reference (as TRL), so rewards start at 0."}
    )

    def __post_init__(self):
        if self.mc_samples < 1:
            raise ValueError(f"--mc_samples must be >= 1, got {self.mc_samples}")
        if self.beta <= 0:
            raise ValueError(f"--beta must be positive, got {self.beta}")
        if self.sft_weight < 0:
            raise ValueError(f"--sft_weight must be >= 0, got {self.sft_weight}")
        super().__post_init__()
