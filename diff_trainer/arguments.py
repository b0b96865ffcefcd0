"""Command-line arguments: dataclasses for `HfArgumentParser`, and config-file + CLI parsing."""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import yaml
from transformers import HfArgumentParser


@dataclass
class ModelArguments:
    """Which model and tokenizer to train, and how to build them."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Hub id or local directory of a pretrained model. Leave unset to train from scratch."}
    )
    model_type: Optional[str] = field(
        default=None, metadata={"help": "Model family when training from scratch (llama, qwen2, gpt2, bert, ...)."}
    )
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "From-scratch config overrides, e.g. 'hidden_size=64,num_hidden_layers=2' (as in run_clm)."},
    )
    config_name: Optional[str] = field(default=None, metadata={"help": "Config hub id or directory, if not the model's."})
    tokenizer_name: Optional[str] = field(
        default=None,
        metadata={"help": "Tokenizer hub id or directory; 'byte' is a byte-level tokenizer that needs no files."},
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16, float16 or auto."})
    dropout: Optional[float] = field(
        default=None, metadata={"help": "Set every dropout probability of the model config to this value."}
    )
    attn_implementation: Optional[str] = field(default="sdpa", metadata={"help": "sdpa or eager."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    dff_token: str = field(
        default="<DFF>", metadata={"help": "Marker separating context (not trained) from target (trained)."}
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
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules that get adapters ('all-linear' = every linear)."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Resume from the last checkpoint in --output_dir (start fresh if there is none)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output_dir that already holds a model or checkpoints, deleting its "
                  "checkpoint-N directories (without it such a run is refused)."},
    )


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes fixed-length training rows."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "Hub dataset name, or with --load_from_disk a directory written by save_to_disk."},
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: Optional[str] = field(
        default=None, metadata={"help": "Training file: .json .jsonl .jsonl.zst .json.gz .txt .csv .parquet."}
    )
    validation_file: Optional[str] = field(default=None, metadata={"help": "Validation file (same formats)."})
    load_from_disk: bool = field(
        default=False, metadata={"help": "Treat --dataset_name as a save_to_disk directory (Dataset or DatasetDict)."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    prompt_column: Optional[str] = field(
        default=None, metadata={"help": "With --response_column: build text as prompt + <DFF> + response."}
    )
    response_column: Optional[str] = field(default=None, metadata={"help": "Response column (see --prompt_column)."})
    validation_split_percentage: float = field(
        default=5, metadata={"help": "Percent of train held out for validation when the data has no validation split."}
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first N training records."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first N validation records."})
    block_size: int = field(default=512, metadata={"help": "Length of every training row in tokens."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for tokenising/packing."})
    concatenate_texts: bool = field(
        default=False, metadata={"help": "Pack: join samples (each followed by EOS) and cut into block_size rows."}
    )
    skip_concat: bool = field(
        default=False, metadata={"help": "Skip tokenising/labelling/packing: the data already holds final rows."}
    )
    ignore_long_samples: bool = field(
        default=False,
        metadata={"help": "Drop samples with len >= block_size instead of forcing --concatenate_texts."},
    )
    force_label: bool = field(default=False, metadata={"help": "Recompute labels even when a labels column exists."})
    padding_side: str = field(
        default="left",
        metadata={
            "help": "Without packing: 'left' pads with ignored EOS on the left; 'right' fills with trained, attended "
            "EOS on the right (LLaDA SFT)."
        },
    )
    save_final_dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "Save the final rows to this directory (bare flag: 'final_dataset') for reuse with "
            "--load_from_disk --skip_concat.",
            "nargs": "?",
            "const": "final_dataset",
        },
    )
    overwrite_final_dataset: bool = field(
        default=False, metadata={"help": "Allow --save_final_dataset to replace an existing directory."}
    )
    preprocess_only: bool = field(
        default=False,
        metadata={"help": "Only preprocess and write --save_final_dataset; no model is built, trained or evaluated."},
    )

    def __post_init__(self):
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"--padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if (self.prompt_column is None) != (self.response_column is None):
            raise ValueError("--prompt_column and --response_column must be given together.")
        if self.load_from_disk and not self.dataset_name:
            raise ValueError("--load_from_disk needs --dataset_name pointing at a save_to_disk directory.")
        if self.preprocess_only and not self.save_final_dataset:
            raise ValueError("--preprocess_only writes the final rows: give --save_final_dataset DIR.")


def config_to_argv(path: str) -> list[str]:
    """Turn a yaml/json config file into CLI-style arguments (so that later CLI flags override them)."""
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of flag names to values.")
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def parse_arguments(dataclass_types, argv: Optional[list[str]] = None):
    """Parse `[config.yaml|config.json] [--flag value ...]`; flags on the command line win over the file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml", ".json")):
        if not os.path.isfile(argv[0]):
            raise FileNotFoundError(f"Config file {argv[0]} does not exist.")
        argv = config_to_argv(argv[0]) + argv[1:]
    parser = HfArgumentParser(dataclass_types)
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # usage message and exit status 2
    return tuple(parsed)


@dataclass
class DiffusionArguments:
    """Masked-diffusion training (LLaDA / MDLM) and AR->diffusion adaptation (DiffuLLaMA)."""

    train_diff_model: bool = field(
        default=False, metadata={"help": "Train a masked-diffusion LM (bidirectional); without it, a causal LM."}
    )
    dff_labels: str = field(
        default="auto",
        metadata={"help": "Train only after the first <DFF>: on, off, or auto (on when the data contains <DFF>)."},
    )
    masked_lm: bool = field(
        default=False, metadata={"help": "Load an encoder with AutoModelForMaskedLM (BERT, ModernBERT) instead."}
    )
    noise_schedule: str = field(default="linear", metadata={"help": "Masking schedule: linear or cosine."})
    time_eps: float = field(default=1e-3, metadata={"help": "Minimum mask probability: p_mask = (1-eps) t + eps."})
    antithetic_time: bool = field(
        default=True, metadata={"help": "Stratify the batch's diffusion times: t_i = (u + i/B) mod 1."}
    )
    loss_normalization: Optional[str] = field(
        default=None,
        metadata={
            "help": "llada_pretrain (sum / (B*L)), llada_sft (per-row sum / answer length), masked (sum / masked "
            "tokens) or token (sum / maskable tokens). Default: llada_pretrain for packed data, llada_sft otherwise."
        },
    )
    random_length_prob: float = field(
        default=0.0, metadata={"help": "Share of rows shortened to a random length (LLaDA pretraining uses 0.01)."}
    )
    shift_logits: bool = field(
        default=False, metadata={"help": "Logits at i predict token i+1 (adapting an AR model, DiffuLLaMA/Dream)."}
    )
    attention_annealing_steps: int = field(
        default=0,
        metadata={"help": "Anneal causal -> bidirectional attention over this many steps (DiffuLLaMA); 0 = off."},
    )
    prompt_dropout: float = field(
        default=0.0, metadata={"help": "Probability of replacing a row's whole prompt by masks (trains CFG)."}
    )
    eval_mc_samples: int = field(
        default=8, metadata={"help": "Monte-Carlo samples for the evaluation ELBO bound (LLaDA uses 128)."}
    )
    eval_mask_seed: int = field(
        default=1234, metadata={"help": "Seed of evaluation masks, so eval losses compare across checkpoints."}
    )

    def __post_init__(self):
        from .diffusion.losses import LOSS_NORMALIZATIONS

        if self.dff_labels not in ("auto", "on", "off"):
            raise ValueError(f"--dff_labels must be auto, on or off, got {self.dff_labels!r}")
        if self.loss_normalization is not None and self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"--loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}")
        if not 0 <= self.random_length_prob <= 1 or not 0 <= self.prompt_dropout <= 1:
            raise ValueError("--random_length_prob and --prompt_dropout are probabilities in [0, 1].")
        diffusion_only = {
            "shift_logits": self.shift_logits, "attention_annealing_steps": self.attention_annealing_steps > 0,
            "prompt_dropout": self.prompt_dropout > 0, "random_length_prob": self.random_length_prob > 0,
            "masked_lm": self.masked_lm, "loss_normalization": self.loss_normalization is not None,
        }
        used = [name for name, on in diffusion_only.items() if on]
        if used and not self.train_diff_model:
            raise ValueError(f"--{' --'.join(used)} only apply with --train_diff_model.")
        if self.attention_annealing_steps > 0 and self.masked_lm:
            raise ValueError("--attention_annealing_steps anneals a causal model; an encoder is already bidirectional.")
