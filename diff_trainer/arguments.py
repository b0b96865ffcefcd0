"""Command-line arguments: dataclasses for `HfArgumentParser`, and config-file + CLI parsing."""

import json
import logging
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Optional

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .data.preference import INVALID_PAIR_MODES, RESPONSE_PADDINGS
from .diffusion.losses import LOSS_NORMALIZATIONS
from .diffusion.schedules import SCHEDULES
from .diffusion.sedd import SEDD_NOISES, SEDD_OBJECTIVES
from .noising import PREFIX_SHUFFLE_UNITS

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model and tokenizer to build or load, and how (auto class, dtype, LoRA)."""

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
        metadata={"help": "Tokenizer hub id or directory; 'byte' is a byte-level tokenizer that needs no files; "
                          "'char' builds a character vocabulary from the training split (run_clm_diff.py)."},
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16, float16 or auto."})
    dropout: Optional[float] = field(
        default=None, metadata={"help": "Set every dropout probability of the model config to this value."}
    )
    attn_implementation: Optional[str] = field(default="sdpa", metadata={"help": "sdpa or eager."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    masked_lm: bool = field(
        default=False,
        metadata={"help": "Load an encoder with AutoModelForMaskedLM (BERT, ModernBERT) as the denoiser "
                          "(with --train_diff_model)."},
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

    def __post_init__(self):
        for name in ("dropout", "lora_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"--{name} is a probability in [0, 1], got {value}.")
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ValueError(f"--lora_r must be at least 1 and --lora_alpha positive, got {self.lora_r} and "
                             f"{self.lora_alpha}.")


@dataclass
class DataSourceArguments:
    """Where records come from (hub, files, a saved directory), which of them are used, where results are saved."""

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
    validation_split_percentage: float = field(
        default=5, metadata={"help": "Percent of train held out for validation when the data has no validation split."}
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first N training records."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first N validation records."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for tokenising/packing."})
    dff_token: str = field(
        default="<DFF>", metadata={"help": "Marker separating context (not trained) from target (trained)."}
    )
    save_final_dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "Save the final rows to this directory (bare flag: 'final_dataset') for reuse with "
            "--dataset_name DIR --load_from_disk.",
            "nargs": "?",
            "const": "final_dataset",
        },
    )
    overwrite_final_dataset: bool = field(
        default=False, metadata={"help": "Allow --save_final_dataset to replace an existing directory."}
    )

    def __post_init__(self):
        from .data.saving import optional_directory

        self.save_final_dataset = optional_directory(self.save_final_dataset, "final_dataset")  # yaml `true`
        if self.load_from_disk and not self.dataset_name:
            raise ValueError("--load_from_disk needs --dataset_name pointing at a save_to_disk directory.")


@dataclass
class DataArguments(DataSourceArguments):
    """How text becomes fixed-length training rows (tokenise, <DFF> labels, pack or pad)."""

    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    prompt_column: Optional[str] = field(
        default=None, metadata={"help": "With --response_column: build text as prompt + <DFF> + response."}
    )
    response_column: Optional[str] = field(default=None, metadata={"help": "Response column (see --prompt_column)."})
    dff_labels: str = field(
        default="auto",
        metadata={"help": "Train only after the first <DFF>: on, off, or auto (on when the data contains <DFF>)."},
    )
    block_size: Optional[int] = field(
        default=None,
        metadata={"help": "Length of every training row in tokens (default 512; with --skip_concat: the saved rows')."},
    )
    concatenate_texts: bool = field(
        default=False, metadata={"help": "Pack: join samples (each followed by EOS) and cut into block_size rows."}
    )
    skip_concat: bool = field(
        default=False,
        metadata={"help": "The data already holds final rows (--save_final_dataset): skip tokenising, labelling and "
                          "packing, only check them; their saved layout sets block size and loss normalisation."},
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
    preprocess_only: bool = field(
        default=False,
        metadata={"help": "Only preprocess and write --save_final_dataset; no model is built, trained or evaluated."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.preprocess_only and not self.save_final_dataset:
            raise ValueError("--preprocess_only writes the final rows: give --save_final_dataset DIR.")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"--padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if (self.prompt_column is None) != (self.response_column is None):
            raise ValueError("--prompt_column and --response_column must be given together.")
        if self.dff_labels not in ("auto", "on", "off"):
            raise ValueError(f"--dff_labels must be auto, on or off, got {self.dff_labels!r}")


@dataclass
class PreferenceDataArguments(DataSourceArguments):
    """How {"prompt", "chosen", "rejected"} records become token rows for DPO."""

    train_file: Optional[str] = field(
        default=None, metadata={"help": "Training pairs: .jsonl, .jsonl.zst, .jsonl.gz or .json (a list of records)."}
    )
    validation_split_percentage: float = field(
        default=0, metadata={"help": "Percent of the train pairs held out for validation when there is no validation "
                                     "split (0 = none)."}
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt."})
    chosen_column: str = field(default="chosen", metadata={"help": "Column holding the preferred response."})
    rejected_column: str = field(default="rejected", metadata={"help": "Column holding the dispreferred response."})
    prompt_suffix: str = field(
        default="",
        metadata={"help": "Text appended to every prompt, e.g. '<DFF>' for a checkpoint trained on prompt<DFF>answer."},
    )
    max_length: int = field(default=512, metadata={"help": "Longest prompt + response + EOS, in tokens."})
    max_prompt_length: Optional[int] = field(
        default=None, metadata={"help": "Longer prompts keep their last max_prompt_length tokens (None: no limit)."}
    )
    response_padding: Optional[str] = field(
        default=None,
        metadata={"help": "eos: fill responses with trained EOS up to max_length (LLaDA SFT, the model learns to stop; "
                          "the EOS are scored); ignore: pad per batch with unattended, unscored padding. Default: eos "
                          "for a checkpoint trained on right EOS-padded rows, ignore otherwise."},
    )
    invalid_pairs: str = field(
        default="skip",
        metadata={"help": "Records with a missing key, an empty response or chosen == rejected: skip (counted and "
                          "logged with file and line) or error."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.invalid_pairs not in INVALID_PAIR_MODES:
            raise ValueError(f"--invalid_pairs must be one of {INVALID_PAIR_MODES}, got {self.invalid_pairs!r}")
        if self.response_padding is not None and self.response_padding not in RESPONSE_PADDINGS:
            raise ValueError(f"--response_padding must be one of {RESPONSE_PADDINGS}, got {self.response_padding!r}")
        if self.max_length < 2:
            raise ValueError(f"--max_length must be at least 2 (a response token and EOS), got {self.max_length}")
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(f"--max_prompt_length must be in [1, max_length), got {self.max_prompt_length}")

    @property
    def columns(self) -> tuple[str, str, str]:
        return self.prompt_column, self.chosen_column, self.rejected_column


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


@dataclass
class DiffusionTrainingArguments(RunArguments):
    """Training settings of run_clm_diff.py: masked diffusion (LLaDA / MDLM), AR->diffusion adaptation (DiffuLLaMA).

    `DiffusionTrainer` reads them as `self.args.<name>`; without --train_diff_model a causal LM is trained.
    """

    train_diff_model: bool = field(
        default=False, metadata={"help": "Train a masked-diffusion LM (bidirectional); without it, a causal LM."}
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
    prefix_shuffle: str = field(
        default="none",
        metadata={"help": "Permute each document's prefix (before <DFF>) anew at every draw, so the model does not "
                  "rely on its order: none, segments (the parts between --prefix_separator, e.g. keywords) or tokens "
                  "(single tokens). Labels are untouched; evaluation keeps the order unless --eval_prefix_shuffle."},
    )
    prefix_separator: str = field(
        default="<SEP>", metadata={"help": "The text between prefix segments (--prefix_shuffle segments)."}
    )
    eval_prefix_shuffle: bool = field(
        default=False, metadata={"help": "Permute prefixes during evaluation too (loss, accuracy and ELBO)."}
    )
    eval_mc_samples: int = field(
        default=8, metadata={"help": "Monte-Carlo samples for the evaluation ELBO bound (LLaDA uses 128)."}
    )
    eval_mask_seed: int = field(
        default=1234, metadata={"help": "Seed of evaluation masks, so eval losses compare across checkpoints."}
    )
    diffusion_objective: str = field(
        default="masked",
        metadata={"help": "masked (masked diffusion), sedd_absorb or sedd_uniform (score entropy, SEDD: absorbing or "
                          "uniform transitions; the uniform graph wraps a plain LM with a noise-level embedding)."},
    )
    sedd_noise: str = field(default="loglinear", metadata={"help": "SEDD noise: loglinear or geometric."})
    sigma_min: float = field(default=1e-4, metadata={"help": "Geometric SEDD noise: smallest total noise."})
    sigma_max: float = field(default=20.0, metadata={"help": "Geometric SEDD noise: largest total noise."})
    sedd_scale_by_sigma: bool = field(
        default=False, metadata={"help": "sedd_absorb: subtract log(e^sigma - 1) + log(N - 1) from the output (SEDD)."}
    )
    isolate_documents: bool = field(
        default=False,
        metadata={"help": "Packed rows (--concatenate_texts): each token attends only to its own EOS-terminated "
                          "document (a block-diagonal bidirectional mask per row), not to the row's other documents."},
    )

    def __post_init__(self):
        self._check_objective()
        if self.noise_schedule not in SCHEDULES:
            raise ValueError(f"--noise_schedule must be one of {', '.join(SCHEDULES)}, got {self.noise_schedule!r}.")
        if not 0 <= self.time_eps <= 1:
            raise ValueError(f"--time_eps is the smallest mask probability, in [0, 1]; got {self.time_eps}.")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"--sigma_min and --sigma_max must satisfy 0 < sigma_min < sigma_max, got "
                             f"{self.sigma_min} and {self.sigma_max}.")
        if self.loss_normalization is not None and self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"--loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}")
        if not 0 <= self.random_length_prob <= 1 or not 0 <= self.prompt_dropout <= 1:
            raise ValueError("--random_length_prob and --prompt_dropout are probabilities in [0, 1].")
        if self.prefix_shuffle not in PREFIX_SHUFFLE_UNITS:
            raise ValueError(f"--prefix_shuffle must be one of {PREFIX_SHUFFLE_UNITS}, got {self.prefix_shuffle!r}")
        if self.eval_prefix_shuffle and self.prefix_shuffle == "none":
            raise ValueError("--eval_prefix_shuffle needs --prefix_shuffle segments|tokens.")
        if self.prefix_shuffle == "segments" and not self.prefix_separator.strip():
            raise ValueError("--prefix_shuffle segments needs a non-blank --prefix_separator.")
        diffusion_only = {**self._masked_diffusion_flags(), "loss_normalization": self.loss_normalization is not None}
        used = [name for name, on in diffusion_only.items() if on]
        if used and not self.train_diff_model:
            raise ValueError(f"--{' --'.join(used)} only apply with --train_diff_model.")
        unused = self._diffusion_settings_changed() if not self.train_diff_model else {}
        if unused:  # e.g. a causal twin trained from a diffusion config with --train_diff_model false
            logger.warning("A causal run (no --train_diff_model) does not use the diffusion settings %s.",
                           ", ".join(f"--{name} {value}" for name, value in unused.items()))
        super().__post_init__()

    def _diffusion_settings_changed(self) -> dict:
        """This class's own settings (diffusion only) whose values differ from their defaults (name -> value)."""
        own = DiffusionTrainingArguments.__annotations__
        return {item.name: getattr(self, item.name) for item in fields(self)
                if item.name in own and item.name != "train_diff_model" and getattr(self, item.name) != item.default}

    def _masked_diffusion_flags(self) -> dict:
        """Whether each masked-diffusion training flag is in use (flag name -> bool)."""
        return {"shift_logits": self.shift_logits, "attention_annealing_steps": self.attention_annealing_steps > 0,
                "prompt_dropout": self.prompt_dropout > 0, "random_length_prob": self.random_length_prob > 0,
                "prefix_shuffle": self.prefix_shuffle != "none", "masked_head": self.masked_head is not None,
                "isolate_documents": self.isolate_documents}

    def _check_objective(self) -> None:
        """SEDD flags only with a SEDD objective; masked-diffusion-only flags refused with one."""
        if self.diffusion_objective not in ("masked", *SEDD_OBJECTIVES):
            raise ValueError(f"--diffusion_objective must be masked, {' or '.join(SEDD_OBJECTIVES)}, "
                             f"got {self.diffusion_objective!r}")
        if self.sedd_noise not in SEDD_NOISES:
            raise ValueError(f"--sedd_noise must be one of {SEDD_NOISES}, got {self.sedd_noise!r}")
        sedd_flags = {"sedd_noise": self.sedd_noise != "loglinear", "sigma_min": self.sigma_min != 1e-4,
                      "sigma_max": self.sigma_max != 20.0, "sedd_scale_by_sigma": self.sedd_scale_by_sigma}
        used = [name for name, on in sedd_flags.items() if on]
        if self.diffusion_objective == "masked":
            if used:
                raise ValueError(f"--{' --'.join(used)} only apply with --diffusion_objective sedd_absorb|sedd_uniform.")
            return
        if not self.train_diff_model:
            raise ValueError("--diffusion_objective sedd_* trains a diffusion model: add --train_diff_model.")
        masked_only = {**self._masked_diffusion_flags(), "noise_schedule": self.noise_schedule != "linear"}
        used = [name for name, on in masked_only.items() if on]
        if used:
            raise ValueError(f"--{' --'.join(used)} belong to masked diffusion; they are not defined for "
                             f"--diffusion_objective {self.diffusion_objective}.")

    def diffusion_settings(self) -> dict:
        """The settings a checkpoint records in its `diffusion_config` (see modeling.write_diffusion_config and
        sedd_objective.prepare_sedd_model)."""
        if self.diffusion_objective != "masked":
            return {"objective": self.diffusion_objective, "sedd_noise": self.sedd_noise, "sigma_min": self.sigma_min,
                    "sigma_max": self.sigma_max, "sedd_scale_by_sigma": self.sedd_scale_by_sigma,
                    "time_eps": self.time_eps}
        return {"shift_logits": self.shift_logits, "noise_schedule": self.noise_schedule, "time_eps": self.time_eps}


@dataclass
class DPOTrainingArguments(RunArguments):
    """VRPO / diffusion DPO settings (LLaDA 1.5 used beta 0.2, sft_weight 0.05, mc_samples 8), read as self.args.beta."""

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
    ref_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Frozen reference checkpoint; default: the policy's starting point."}
    )
    precompute_ref_scores: bool = field(
        default=False,
        metadata={"help": "Score the pairs with the reference once before training, store the scores with the "
                          "dataset and keep no reference model. Masks are then the same in every epoch."},
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
    parser = HfArgumentParser(dataclass_types)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml", ".json")):
        if not os.path.isfile(argv[0]):
            parser.error(f"config file {argv[0]} does not exist.")
        try:
            argv = config_to_argv(argv[0]) + argv[1:]
        except (ValueError, yaml.YAMLError) as error:  # json.JSONDecodeError is a ValueError
            parser.error(f"{argv[0]}: not a valid config file: {' '.join(str(error).split())}")
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # a flag check in a __post_init__: a usage error (exit status 2), not a traceback
        parser.error(str(error))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # usage message and exit status 2
    return tuple(parsed)
