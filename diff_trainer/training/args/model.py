"""Model arguments: which model and tokenizer to build or load, and how."""

from dataclasses import dataclass, field

from ...diffusion_config import masked_lm_problem


@dataclass
class ModelArguments:
    """Which model and tokenizer to build or load, and how (auto class, dtype, LoRA)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local directory of a pretrained model. Leave unset to train from scratch."},
    )
    model_type: str | None = field(
        default=None, metadata={"help": "Model family when training from scratch (llama, qwen2, gpt2, bert, ...)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "From-scratch config overrides, e.g. 'hidden_size=64,num_hidden_layers=2' (as in run_clm)."},
    )
    config_name: str | None = field(default=None, metadata={"help": "Config hub id or directory, if not the model's."})
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer hub id or directory; 'byte' is a byte-level tokenizer that needs no files; "
            "'char' builds a character vocabulary from the training split (run_clm_diff.py)."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16, float16 or auto."})
    dropout: float | None = field(
        default=None, metadata={"help": "Set every dropout probability of the model config to this value."}
    )
    attn_implementation: str | None = field(default="sdpa", metadata={"help": "sdpa or eager."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    masked_lm: bool = field(
        default=False,
        metadata={
            "help": "Load an encoder with AutoModelForMaskedLM (BERT, ModernBERT) as the denoiser "
            "(with --train_diff_model)."
        },
    )
    mask_token: str = field(
        default="<|mdm_mask|>",
        metadata={"help": "Mask token added for diffusion when the tokenizer has none of its own."},
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Modules that get adapters ('all-linear' = every linear)."},
    )

    def __post_init__(self):
        for name in ("dropout", "lora_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"--{name} is a probability in [0, 1], got {value}.")
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ValueError(
                f"--lora_r must be at least 1 and --lora_alpha positive, got {self.lora_r} and {self.lora_alpha}."
            )
        if self.masked_lm and masked_lm_problem(self.model_type):
            raise ValueError(masked_lm_problem(self.model_type))
