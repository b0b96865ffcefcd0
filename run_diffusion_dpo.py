#!/usr/bin/env python
"""Preference-tune a masked-diffusion LM on {"prompt", "chosen", "rejected"} pairs with VRPO (LLaDA 1.5 DPO).

    python run_diffusion_dpo.py configs/dpo.yaml [--flag value ...]
    accelerate launch run_diffusion_dpo.py configs/dpo.yaml [--flag value ...]

Flags: `python run_diffusion_dpo.py --help`. A yaml/json config file may come first; command-line flags override it.
--model_name_or_path must be a masked-diffusion checkpoint (e.g. from run_clm_diff.py --train_diff_model).
"""

import logging
import sys
from dataclasses import replace

from transformers import AutoConfig, TrainingArguments, set_seed

from diff_trainer.arguments import ModelArguments, parse_arguments
from diff_trainer.data.preference import PreferenceDataArguments, load_preference_data, save_pairs, tokenize_pairs
from diff_trainer.dpo import DiffusionDPOTrainer, DPOArguments
from diff_trainer.modeling import (
    add_special_tokens,
    apply_lora,
    check_model_source,
    load_model,
    load_tokenizer,
    make_bidirectional,
    read_diffusion_config,
)
from diff_trainer.training import check_output_dir, setup_logging, train_and_evaluate

logger = logging.getLogger("run_diffusion_dpo")


def load_diffusion_model(model_args, tokenizer, name_or_path: str):
    """A masked-diffusion checkpoint (causal LM made bidirectional, or a masked-LM encoder)."""
    check_model_source(name_or_path, "--model_name_or_path" if name_or_path == model_args.model_name_or_path
                       else "--ref_model_name_or_path")
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=model_args.trust_remote_code)
    if read_diffusion_config(config) is None:
        raise ValueError(f"{name_or_path} is not a masked-diffusion checkpoint (no diffusion_config in its config); "
                         "train one with run_clm_diff.py --train_diff_model first.")
    masked_lm = any(name.endswith("ForMaskedLM") for name in config.architectures or [])
    model = load_model(replace(model_args, model_name_or_path=name_or_path), tokenizer, masked_lm=masked_lm)
    return make_bidirectional(model)


def main(argv=None):
    model_args, data_args, dpo_args, training_args = parse_arguments(
        (ModelArguments, PreferenceDataArguments, DPOArguments, TrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    check_output_dir(training_args, resume=model_args.resume, overwrite=model_args.overwrite_output_dir)
    if model_args.model_name_or_path is None:
        raise ValueError("DPO starts from a trained diffusion model: pass --model_name_or_path.")

    tokenizer = load_tokenizer(model_args)
    new_token_ids = add_special_tokens(tokenizer, model_args.dff_token, model_args.mask_token)
    raw, _ = load_preference_data(data_args, seed=training_args.seed)
    pairs = tokenize_pairs(raw, tokenizer, data_args, seed=training_args.seed,
                           main_process_first=training_args.main_process_first)
    train_dataset = pairs["train"] if training_args.do_train else None
    eval_dataset = pairs.get("validation")

    model = load_diffusion_model(model_args, tokenizer, model_args.model_name_or_path)
    ref_model = None
    if dpo_args.ref_model_name_or_path:
        ref_model = load_diffusion_model(model_args, tokenizer, dpo_args.ref_model_name_or_path)
    if model_args.use_lora:
        model = apply_lora(model, model_args, new_token_ids)  # the reference is this model with adapters disabled
    trainer = DiffusionDPOTrainer(model, ref_model, args=training_args, dpo_args=dpo_args,
                                  train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer)
    if data_args.save_final_dataset and training_args.process_index == 0:
        final = {"train": trainer.train_dataset if trainer.train_dataset is not None else pairs["train"]}
        if trainer.eval_dataset is not None:
            final["validation"] = trainer.eval_dataset
        save_pairs(type(pairs)(final), data_args.save_final_dataset, overwrite=data_args.overwrite_final_dataset)

    train_and_evaluate(trainer, training_args, resume=model_args.resume, evaluate=eval_dataset is not None)


if __name__ == "__main__":
    sys.exit(main())
