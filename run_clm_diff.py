#!/usr/bin/env python
"""Train a causal LM (baseline) or, with --train_diff_model, a masked-diffusion LM on <DFF>-labelled text.

    python run_clm_diff.py configs/demo.yaml [--flag value ...]

Flags: `python run_clm_diff.py --help`. A yaml/json config file may come first; command-line flags override it.
"""

import logging
import sys

from transformers import Trainer, TrainingArguments, set_seed

from diff_trainer.arguments import DataArguments, DiffusionArguments, ModelArguments, parse_arguments
from diff_trainer.data.loading import load_raw_datasets
from diff_trainer.data.pipeline import Preprocessor
from diff_trainer.data.saving import save_final_dataset
from diff_trainer.metrics import add_perplexity, argmax_logits, token_accuracy_metrics
from diff_trainer.modeling import add_special_tokens, apply_lora, load_model, load_tokenizer
from diff_trainer.training import check_output_dir, setup_logging, train_and_evaluate

logger = logging.getLogger("run_clm_diff")


def main(argv=None):
    model_args, data_args, diff_args, training_args = parse_arguments(
        (ModelArguments, DataArguments, DiffusionArguments, TrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    if not data_args.preprocess_only:
        check_output_dir(training_args, resume=model_args.resume, overwrite=model_args.overwrite_output_dir)

    tokenizer = load_tokenizer(model_args)
    new_token_ids = add_special_tokens(
        tokenizer, model_args.dff_token, model_args.mask_token if diff_args.train_diff_model else None
    )

    raw = load_raw_datasets(data_args, seed=training_args.seed)
    preprocessor = Preprocessor(tokenizer, data_args, dff_token=model_args.dff_token, dff_mode=diff_args.dff_labels,
                                main_process_first=training_args.main_process_first)
    final = preprocessor.run(raw)
    if data_args.save_final_dataset and training_args.process_index == 0:
        save_final_dataset(final, data_args.save_final_dataset, overwrite=data_args.overwrite_final_dataset,
                           num_proc=data_args.preprocessing_num_workers)
    if data_args.preprocess_only or not (training_args.do_train or training_args.do_eval):
        logger.info("Preprocessing only: done%s.", f"; the final rows are in {data_args.save_final_dataset}"
                    if data_args.save_final_dataset else "")
        return
    train_dataset, eval_dataset = final["train"], final.get("validation")

    model = load_model(model_args, tokenizer, masked_lm=diff_args.masked_lm)
    if diff_args.train_diff_model:
        from diff_trainer.trainer import build_diffusion_trainer

        packed = preprocessor.concatenate if not data_args.skip_concat else None
        trainer = build_diffusion_trainer(model, tokenizer, diff_args, model_args, training_args,
                                          train_dataset, eval_dataset, new_token_ids, packed=packed)
    else:
        if model_args.use_lora:
            model = apply_lora(model, model_args, new_token_ids)
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset if training_args.do_train else None,
            eval_dataset=eval_dataset if training_args.do_eval else None,
            processing_class=tokenizer,
            compute_metrics=token_accuracy_metrics(shift=True),
            preprocess_logits_for_metrics=argmax_logits,
        )

    train_and_evaluate(trainer, training_args, resume=model_args.resume, evaluate=eval_dataset is not None,
                       add_eval_metrics=None if diff_args.train_diff_model else add_perplexity)


if __name__ == "__main__":
    sys.exit(main())
