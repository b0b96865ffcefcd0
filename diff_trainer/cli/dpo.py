"""Preference-tune a masked- or block-diffusion LM on {"prompt", "chosen", "rejected"} pairs with VRPO (LLaDA 1.5 DPO).

The pairs are texts, or TRL's conversational preference records (message lists) rendered with the chat template.

    python run_diffusion_dpo.py configs/dpo.yaml [--flag value ...]
    accelerate launch run_diffusion_dpo.py configs/dpo.yaml [--flag value ...]
    python -m diff_trainer.cli.dpo configs/dpo.yaml [--flag value ...]     # the same, from any directory

Flags: `python run_diffusion_dpo.py --help`. A yaml/json config file may come first; command-line flags override it.
--model_name_or_path must be a masked- or block-diffusion checkpoint (e.g. from run_clm_diff.py --train_diff_model).
"""

import sys
from dataclasses import replace

from transformers import set_seed

from diff_trainer.data.chat import set_chat_template
from diff_trainer.data.loading import DataError, require_validation_data
from diff_trainer.data.preference import load_preference_data, save_pairs, tokenize_pairs, with_response_padding
from diff_trainer.models.loading import add_special_tokens, load_tokenizer, model_config
from diff_trainer.training.args.data import PreferenceDataArguments
from diff_trainer.training.args.dpo import DPOTrainingArguments
from diff_trainer.training.args.model import ModelArguments
from diff_trainer.training.args.parsing import parse_arguments
from diff_trainer.training.dpo import DiffusionDPOTrainer, checked_diffusion_config, precompute_reference_scores
from diff_trainer.training.model import prepare_model
from diff_trainer.training.runner import (
    check_output_dir,
    check_resumed_settings,
    nothing_to_run,
    run_entry_point,
    setup_logging,
    train_and_evaluate,
)


def main(argv=None):
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, PreferenceDataArguments, DPOTrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    check_output_dir(training_args)
    if model_args.model_name_or_path is None:
        raise DataError("DPO starts from a trained diffusion model: pass --model_name_or_path.")

    tokenizer = load_tokenizer(model_args)
    template_ids = set_chat_template(tokenizer, data_args.chat_template) if data_args.chat_template else []
    new_token_ids = template_ids + add_special_tokens(tokenizer, data_args.dff_token, model_args.mask_token)
    if training_args.do_train:  # the checkpoint's tokenizer and architecture, before the model loads
        check_resumed_settings(training_args, tokenizer, model_config(model_args, tokenizer))
    model = prepare_model(model_args, tokenizer, "diffusion", new_token_ids=new_token_ids)
    data_args = with_response_padding(data_args, checked_diffusion_config(model))
    raw, _ = load_preference_data(data_args, seed=training_args.seed, tokenizer=tokenizer)
    pairs = tokenize_pairs(
        raw, tokenizer, data_args, seed=training_args.seed, main_process_first=training_args.main_process_first
    )
    require_validation_data(pairs, training_args.do_eval)

    ref_model = None
    if training_args.ref_model_name_or_path:
        ref_args = replace(model_args, model_name_or_path=training_args.ref_model_name_or_path, use_lora=False)
        ref_model = prepare_model(ref_args, tokenizer, "diffusion")
    if training_args.precompute_ref_scores:
        # the reference: the given one, else the policy's starting point (with LoRA: the adapters disabled)
        pairs = precompute_reference_scores(
            pairs, ref_model if ref_model is not None else model, tokenizer, training_args
        )
        ref_model = None
    if data_args.save_final_dataset and training_args.process_index == 0:
        save_pairs(pairs, data_args.save_final_dataset, overwrite=data_args.overwrite_final_dataset)
    saved = f" and saved to {data_args.save_final_dataset}" if data_args.save_final_dataset else ""
    if nothing_to_run(
        training_args,
        f"tokenised {', '.join(f'{len(s)} {n}' for n, s in pairs.items())} pairs{saved}; nothing trained or evaluated",
    ):
        return
    eval_dataset = pairs.get("validation")
    trainer = DiffusionDPOTrainer(
        model,
        ref_model,
        args=training_args,
        train_dataset=pairs["train"] if training_args.do_train else None,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    train_and_evaluate(trainer, training_args, evaluate=eval_dataset is not None)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
