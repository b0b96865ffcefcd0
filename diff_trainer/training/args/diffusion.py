"""Training arguments of run_clm_diff.py: the causal baseline or a diffusion objective (`objectives`)."""

import logging
from dataclasses import dataclass, field, fields

from ...diffusion.losses import LOSS_NORMALIZATIONS
from ...diffusion_config import DEFAULT_OBJECTIVE, OBJECTIVE_ALIASES
from ...objectives import OBJECTIVES, objective_for
from .run import RunArguments

logger = logging.getLogger(__name__)


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
    loss_normalization: str | None = field(
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
        metadata={
            "help": "Permute each document's prefix (before <DFF>) anew at every draw, so the model does not "
            "rely on its order: none, segments (the parts between --prefix_separator, e.g. keywords) or tokens "
            "(single tokens). Labels are untouched; evaluation keeps the order unless --eval_prefix_shuffle."
        },
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
        metadata={
            "help": "masked (masked diffusion), sedd_absorb or sedd_uniform (score entropy, SEDD: absorbing or "
            "uniform transitions; the uniform graph wraps a plain LM with a noise-level embedding), or "
            "block (block diffusion, BD3-LM: needs --diffusion_block_size)."
        },
    )
    diffusion_block_size: int | None = field(
        default=None,
        metadata={
            "help": "--diffusion_objective block: tokens per block L' (a divisor of the row length "
            "--block_size); 1 is a causal LM, the row length is masked diffusion."
        },
    )
    complementary_masks: bool = field(
        default=False,
        metadata={
            "help": "--diffusion_objective block: also train every row with the complement of its mask "
            "(Fast-dLLM v2), so each trained token is masked in one of the two copies."
        },
    )
    sedd_noise: str = field(default="loglinear", metadata={"help": "SEDD noise: loglinear or geometric."})
    sigma_min: float = field(default=1e-4, metadata={"help": "Geometric SEDD noise: smallest total noise."})
    sigma_max: float = field(default=20.0, metadata={"help": "Geometric SEDD noise: largest total noise."})
    sedd_scale_by_sigma: bool = field(
        default=False, metadata={"help": "sedd_absorb: subtract log(e^sigma - 1) + log(N - 1) from the output (SEDD)."}
    )
    isolate_documents: bool = field(
        default=False,
        metadata={
            "help": "Packed rows (--concatenate_texts): each token attends only to its own EOS-terminated "
            "document, or its own conversation (recorded at packing), through a block-diagonal "
            "bidirectional mask per row, not to the row's other documents."
        },
    )

    def __post_init__(self):
        self._check_objective()
        if not 0 <= self.time_eps <= 1:
            raise ValueError(f"--time_eps is the smallest mask probability, in [0, 1]; got {self.time_eps}.")
        if self.loss_normalization is not None and self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"--loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}"
            )
        if not 0 <= self.random_length_prob <= 1 or not 0 <= self.prompt_dropout <= 1:
            raise ValueError("--random_length_prob and --prompt_dropout are probabilities in [0, 1].")
        if self.eval_prefix_shuffle and self.prefix_shuffle == "none":
            raise ValueError("--eval_prefix_shuffle needs --prefix_shuffle segments|tokens.")
        if self.prefix_shuffle == "segments" and not self.prefix_separator.strip():
            raise ValueError("--prefix_shuffle segments needs a non-blank --prefix_separator.")
        diffusion_only = {**self._diffusion_only_flags(), "loss_normalization": self.loss_normalization is not None}
        used = [name for name, on in diffusion_only.items() if on]
        if used and not self.train_diff_model:
            raise ValueError(f"--{' --'.join(used)} only apply with --train_diff_model.")
        unused = self._diffusion_settings_changed() if not self.train_diff_model else {}
        if unused:  # e.g. a causal twin trained from a diffusion config with --train_diff_model false
            logger.warning(
                "A causal run (no --train_diff_model) does not use the diffusion settings %s.",
                ", ".join(f"--{name} {value}" for name, value in unused.items()),
            )
        super().__post_init__()

    def _diffusion_settings_changed(self) -> dict:
        """This class's own settings (diffusion only) whose values differ from their defaults (name -> value)."""
        own = DiffusionTrainingArguments.__annotations__
        return {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if item.name in own and item.name != "train_diff_model" and getattr(self, item.name) != item.default
        }

    def _diffusion_only_flags(self) -> dict:
        """Whether each flag that needs --train_diff_model is in use (flag name -> bool)."""
        return {
            "shift_logits": self.shift_logits,
            "attention_annealing_steps": self.attention_annealing_steps > 0,
            "prompt_dropout": self.prompt_dropout > 0,
            "random_length_prob": self.random_length_prob > 0,
            "prefix_shuffle": self.prefix_shuffle != "none",
            "masked_head": self.masked_head is not None,
            "isolate_documents": self.isolate_documents,
            "complementary_masks": self.complementary_masks,
            "diffusion_block_size": self.diffusion_block_size is not None,
        }

    def _check_objective(self) -> None:
        """Flags of another objective than --diffusion_objective are refused, with the objective they belong to."""
        if OBJECTIVE_ALIASES.get(self.diffusion_objective, self.diffusion_objective) not in OBJECTIVES:
            spellings = [*OBJECTIVE_ALIASES, *(name for name in OBJECTIVES if name not in OBJECTIVE_ALIASES.values())]
            raise ValueError(
                f"--diffusion_objective must be one of {', '.join(spellings)}, got {self.diffusion_objective!r}"
            )
        objective = objective_for(self.diffusion_objective)
        own = objective.flags_in_use(self)  # flags two objectives share (e.g. --shift_logits) are the chosen one's
        for other in dict.fromkeys(OBJECTIVES.values()):
            other.check_arguments(self)
            used = [name for name, on in other.flags_in_use(self).items() if on and name not in own]
            if other is not objective and used:
                spellings = "|".join(
                    name
                    for name in (*OBJECTIVE_ALIASES, *OBJECTIVES)
                    if OBJECTIVES[OBJECTIVE_ALIASES.get(name, name)] is other
                )
                raise ValueError(
                    f"--{' --'.join(used)} only apply with --diffusion_objective {spellings}: they "
                    f"belong to {other.title}, not to --diffusion_objective {self.diffusion_objective}."
                )
        if self.diffusion_objective != DEFAULT_OBJECTIVE and not self.train_diff_model:
            raise ValueError(
                f"--diffusion_objective {self.diffusion_objective} trains a diffusion model: add --train_diff_model."
            )

    def diffusion_settings(self) -> dict:
        """The settings a checkpoint records in its `diffusion_config` (the objective's `settings`)."""
        return objective_for(self.diffusion_objective).settings(self, self.diffusion_objective)
