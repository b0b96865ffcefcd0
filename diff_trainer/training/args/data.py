"""Data arguments: where the texts (DataArguments) or preference pairs (PreferenceDataArguments) come from and how
they become rows."""

from dataclasses import dataclass, field

from ...data.chat import INVALID_RECORD_MODES, MULTI_TURN_MODES
from ...data.preference import INVALID_PAIR_MODES, RESPONSE_PADDINGS
from ...data.saving import optional_directory


@dataclass
class DataSourceArguments:
    """Where records come from (hub, files, a saved directory), which of them are used, where results are saved."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset name, or with --load_from_disk a directory written by save_to_disk."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: str | None = field(
        default=None, metadata={"help": "Training file: .json .jsonl .jsonl.zst .json.gz .txt .csv .parquet."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation file (same formats)."})
    load_from_disk: bool = field(
        default=False, metadata={"help": "Treat --dataset_name as a save_to_disk directory (Dataset or DatasetDict)."}
    )
    validation_split_percentage: float = field(
        default=5, metadata={"help": "Percent of train held out for validation when the data has no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training records."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation records."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenising/packing."})
    dff_token: str = field(
        default="<DFF>", metadata={"help": "Marker separating context (not trained) from target (trained)."}
    )
    save_final_dataset: str | None = field(
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
        self.save_final_dataset = optional_directory(self.save_final_dataset, "final_dataset")  # yaml `true`
        if self.load_from_disk and not self.dataset_name:
            raise ValueError("--load_from_disk needs --dataset_name pointing at a save_to_disk directory.")


@dataclass
class DataArguments(DataSourceArguments):
    """How text becomes fixed-length training rows (tokenise, <DFF> labels, pack or pad)."""

    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "With --response_column: build text as prompt + <DFF> + response."}
    )
    response_column: str | None = field(default=None, metadata={"help": "Response column (see --prompt_column)."})
    dff_labels: str = field(
        default="auto",
        metadata={"help": "Train only after the first <DFF>: on, off, or auto (on when the data contains <DFF>)."},
    )
    block_size: int | None = field(
        default=None,
        metadata={"help": "Length of every training row in tokens (default 512; with --skip_concat: the saved rows')."},
    )
    concatenate_texts: bool = field(
        default=False, metadata={"help": "Pack: join samples (each followed by EOS) and cut into block_size rows."}
    )
    skip_concat: bool = field(
        default=False,
        metadata={
            "help": "The data already holds final rows (--save_final_dataset): skip tokenising, labelling and "
            "packing, only check them; their saved layout sets block size and loss normalisation."
        },
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
    messages_column: str = field(
        default="messages",
        metadata={
            "help": "Column of conversations (lists of {role, content}); records with it, or with prompt/"
            "completion message lists, are rendered with the chat template (docs/chat.md)."
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template for conversations: a bundled name (chatml, llada, qwen2) or a jinja file; "
            "default: the tokenizer's own. It is saved with the tokenizer."
        },
    )
    multi_turn: str = field(
        default="all",
        metadata={
            "help": "Which assistant turns are trained: all (in one example), expand (one example per turn, "
            "LLaDA SFT) or last."
        },
    )
    invalid_records: str = field(
        default="error",
        metadata={"help": "Bad conversational records: error (naming the record) or skip (counted and logged)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.multi_turn not in MULTI_TURN_MODES:
            raise ValueError(f"--multi_turn must be one of {MULTI_TURN_MODES}, got {self.multi_turn!r}")
        if self.invalid_records not in INVALID_RECORD_MODES:
            raise ValueError(f"--invalid_records must be one of {INVALID_RECORD_MODES}, got {self.invalid_records!r}")
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

    train_file: str | None = field(
        default=None, metadata={"help": "Training pairs: .jsonl, .jsonl.zst, .jsonl.gz or .json (a list of records)."}
    )
    validation_split_percentage: float = field(
        default=0,
        metadata={
            "help": "Percent of the train pairs held out for validation when there is no validation split (0 = none)."
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt."})
    chosen_column: str = field(default="chosen", metadata={"help": "Column holding the preferred response."})
    rejected_column: str = field(default="rejected", metadata={"help": "Column holding the dispreferred response."})
    prompt_suffix: str = field(
        default="",
        metadata={"help": "Text appended to every prompt, e.g. '<DFF>' for a checkpoint trained on prompt<DFF>answer."},
    )
    max_length: int = field(default=512, metadata={"help": "Longest prompt + response + EOS, in tokens."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Longer prompts keep their last max_prompt_length tokens (None: no limit)."}
    )
    response_padding: str | None = field(
        default=None,
        metadata={
            "help": "eos: fill responses with trained EOS up to max_length (LLaDA SFT, the model learns to stop; "
            "the EOS are scored); ignore: pad per batch with unattended, unscored padding. Default: eos "
            "for a checkpoint trained on right EOS-padded rows, ignore otherwise."
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "For conversational pairs (message lists): a bundled template name (chatml, llada, qwen2) "
            "or a jinja file; default: the tokenizer's own."
        },
    )
    invalid_pairs: str = field(
        default="skip",
        metadata={
            "help": "Records with a missing key, an empty response or chosen == rejected: skip (counted and "
            "logged with file and line) or error."
        },
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
