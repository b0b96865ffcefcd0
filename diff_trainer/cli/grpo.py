"""Reinforcement learning with verifiable rewards for a masked-diffusion LM: GRPO (or wd1) on TRL's GRPOTrainer.

    python run_diffusion_grpo.py --model_name_or_path outputs/arithmetic_sft --train_file data/arithmetic/train.jsonl \
        --reward_funcs arithmetic --output_dir outputs/grpo [--flag value ...]
    accelerate launch run_diffusion_grpo.py ...

Flags: `python run_diffusion_grpo.py --help` (TRL's GRPOConfig plus the sampler and --logp_estimator). Prompts come
from the `prompt` column; every other column is passed to the rewards by name. A checkpoint that was trained on
`prompt<DFF>answer` rows gets its <DFF> token appended to each prompt.
"""

import os
import sys

from datasets import Dataset
from transformers import AutoConfig, set_seed

from diff_trainer.data.io import read_jsonl
from diff_trainer.data.loading import DataError
from diff_trainer.diffusion_config import read_diffusion_config
from diff_trainer.models.loading import load_tokenizer
from diff_trainer.sampling.masked import context_length
from diff_trainer.training.args.grpo import (
    DiffusionGRPOConfig,
    GRPODataArguments,
    GRPOModelArguments,
    model_arguments,
)
from diff_trainer.training.args.parsing import parse_arguments
from diff_trainer.training.grpo import DiffusionGRPOTrainer, encode_prompt, require_diffusion_policy
from diff_trainer.training.model import prepare_model
from diff_trainer.training.rewards import call_reward, load_reward
from diff_trainer.training.runner import run_entry_point, setup_logging


def checked_checkpoint(path: str | None) -> dict:
    """The checkpoint's diffusion_config, read before the model is loaded; DataError for a causal or SEDD one."""
    if path is None:
        raise DataError("GRPO starts from a trained diffusion model: pass --model_name_or_path.")
    try:
        return require_diffusion_policy(read_diffusion_config(AutoConfig.from_pretrained(path)), path)
    except ValueError as error:
        raise DataError(str(error)) from error


def load_prompts(data_args, dff_token: str | None) -> Dataset:
    """The prompts of --train_file (with the checkpoint's <DFF> appended); DataError naming a bad record."""
    if data_args.train_file is None:
        raise DataError("Pass --train_file: a jsonl of {'prompt': ..., other columns for the rewards}.")
    if not os.path.isfile(data_args.train_file):
        raise DataError(f"--train_file {data_args.train_file}: no such file.")
    try:
        records = list(read_jsonl(data_args.train_file))[: data_args.max_train_samples]
    except ValueError as error:  # not UTF-8 or not JSON
        raise DataError(f"--train_file {data_args.train_file} is not JSON lines: {error}.") from error
    if not records:
        raise DataError(f"{data_args.train_file} holds no records.")
    for number, record in enumerate(records, 1):
        if not isinstance(record.get("prompt"), str):
            raise DataError(f"{data_args.train_file} record {number}: no string 'prompt'.")
        if dff_token and not record["prompt"].endswith(dff_token):
            record["prompt"] += dff_token
    return Dataset.from_list(records)


def check_prompt_lengths(prompts: Dataset, tokenizer, model, args, path: str) -> None:
    """Every prompt plus max_completion_length fits the model's context, else DataError naming the record."""
    limit = context_length(model)
    if limit is None:
        return
    for number, prompt in enumerate(prompts["prompt"], 1):
        length = len(encode_prompt(tokenizer, prompt))
        if length + args.max_completion_length > limit:
            raise DataError(
                f"{path} record {number}: a prompt of {length} tokens plus --max_completion_length "
                f"{args.max_completion_length} exceeds the model's context of {limit} positions; "
                "shorten the prompt or the completion."
            )


def checked_rewards(specs: list[str], prompts: Dataset) -> list:
    """The reward functions, each tried on two rows of the data (empty completions) and wrapped so that a raise or
    a wrong number of values stops training with one clear error (DataError here, before training)."""
    rows = prompts.select(range(min(2, len(prompts))))
    columns = {name: rows[name] for name in rows.column_names if name != "prompt"}
    functions = []
    for spec in specs:
        try:
            function = load_reward(spec)
            call_reward(function, rows["prompt"], [""] * len(rows), **columns)
        except ValueError as error:
            raise DataError(str(error)) from error

        def checked(prompts, completions, _function=function, **kwargs):
            return call_reward(_function, prompts, completions, **kwargs)

        checked.__name__ = getattr(function, "__name__", spec)  # TRL logs rewards/<name>
        functions.append(checked)
    return functions


def main(argv=None):
    model_args, data_args, training_args = parse_arguments(
        (GRPOModelArguments, GRPODataArguments, DiffusionGRPOConfig), argv
    )
    model_args = model_arguments(model_args, training_args)
    setup_logging(training_args)
    set_seed(training_args.seed)
    diffusion_config = checked_checkpoint(model_args.model_name_or_path)
    prompts = load_prompts(data_args, diffusion_config.get("dff_token"))
    rewards = checked_rewards(data_args.reward_funcs, prompts)
    tokenizer = load_tokenizer(model_args)
    model = prepare_model(model_args, tokenizer, "diffusion")
    check_prompt_lengths(prompts, tokenizer, model, training_args, data_args.train_file)
    trainer = DiffusionGRPOTrainer(
        model, rewards, args=training_args, train_dataset=prompts, processing_class=tokenizer
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
