"""GRPO arguments (run_diffusion_grpo.py): TRL's GRPOConfig plus the diffusion sampler and log-probability estimator.

The completion length is TRL's --max_completion_length (the sampler's gen_length) and the sampling temperature TRL's
--temperature; everything else (num_generations, beta, epsilon, num_iterations, loss_type, ...) keeps TRL's name.
"""

from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass

from trl import GRPOConfig

from ...diffusion.policy_logps import LOGP_ESTIMATORS
from .model import ModelArguments

TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo")
DIFFUSION_LOSS_TYPES = ("wd1",)


def _copied_field(original):
    if original.default_factory is not MISSING:
        return field(default_factory=original.default_factory, metadata=original.metadata)
    return field(default=original.default, metadata=original.metadata)


# ModelArguments less --trust_remote_code, which GRPOConfig has too (one flag; `model_arguments` puts it back)
GRPOModelArguments = make_dataclass(
    "GRPOModelArguments",
    [(f.name, f.type, _copied_field(f)) for f in fields(ModelArguments) if f.name != "trust_remote_code"],
)


def model_arguments(parsed, training_args) -> ModelArguments:
    """The ModelArguments of a run: the parsed GRPOModelArguments with GRPOConfig's trust_remote_code."""
    return ModelArguments(**asdict(parsed), trust_remote_code=training_args.trust_remote_code)


@dataclass
class GRPODataArguments:
    """The prompts ({"prompt", ...} jsonl; the other columns are passed to the rewards) and the rewards."""

    train_file: str | None = field(default=None, metadata={"help": "jsonl of {'prompt': ..., other columns}."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["arithmetic"],
        metadata={
            "help": "Rewards, summed with TRL's --reward_weights: built-in names (arithmetic, countdown, "
            "sudoku, <task>_format), module:function or path/to/file.py:function."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N prompts."})


@dataclass
class DiffusionGRPOConfig(GRPOConfig):
    """GRPOConfig with the masked-diffusion sampler's settings and the estimator of per-token log-probabilities."""

    logp_estimator: str = field(
        default="one_step",
        metadata={
            "help": "one_step (d1: completion fully masked, prompt tokens masked with --p_mask_prompt), "
            "coupled (DiffuCoder: a mask and its complement), elbo (VRPO's Monte-Carlo ELBO, "
            "--mc_samples copies; a sequence-level ratio)."
        },
    )
    p_mask_prompt: float = field(default=0.3, metadata={"help": "one_step: chance of masking each prompt token."})
    mc_samples: int = field(default=4, metadata={"help": "elbo: noisy copies of every completion."})
    steps: int | None = field(default=None, metadata={"help": "Sampler steps (default: max_completion_length)."})
    block_length: int | None = field(
        default=None, metadata={"help": "Sampler block length (default: the whole completion)."}
    )
    remasking: str = field(default="low_confidence", metadata={"help": "low_confidence | random | margin | entropy."})
    threshold: float | None = field(default=None, metadata={"help": "Fast-dLLM confidence threshold."})
    cache: str = field(default="none", metadata={"help": "none | prefix | dual (Fast-dLLM key/value caches)."})
    wd1_psi: float = field(default=1.0, metadata={"help": "loss_type wd1: the advantages' softmax scale ψ."})

    def __post_init__(self):
        if self.logp_estimator not in LOGP_ESTIMATORS:
            raise ValueError(
                f"--logp_estimator must be one of {', '.join(LOGP_ESTIMATORS)}, not {self.logp_estimator!r}."
            )
        if self.loss_type not in TRL_LOSS_TYPES + DIFFUSION_LOSS_TYPES:
            raise ValueError(
                f"--loss_type must be one of {', '.join(TRL_LOSS_TYPES + DIFFUSION_LOSS_TYPES)}, "
                f"not {self.loss_type!r}."
            )
        if not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError(f"--p_mask_prompt must be in [0, 1), not {self.p_mask_prompt}.")
        if self.mc_samples < 1:
            raise ValueError(f"--mc_samples must be >= 1, not {self.mc_samples}.")
        if self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"--num_generations {self.num_generations}: GRPO's advantages compare completions of "
                "the same prompt; use at least 2."
            )
        super().__post_init__()
