"""Train a causal LM (baseline) or, with --train_diff_model, a diffusion LM on <DFF>-labelled text.

    python run_clm_diff.py configs/demo.yaml [--flag value ...]
    python -m diff_trainer.cli.train configs/demo.yaml [--flag value ...]     # the same, from any directory

Flags: `python run_clm_diff.py --help`. A yaml/json config file may come first; command-line flags override it.
"""

import logging
import sys

from transformers import set_seed

from diff_trainer.data.char_tokenizer import CHAR_TOKENIZER, training_texts
from diff_trainer.data.chat import set_chat_template
from diff_trainer.data.loading import check_block_size, load_raw_datasets, require_validation_data
from diff_trainer.data.pipeline import LAYOUT_FILE, Preprocessor
from diff_trainer.data.saving import save_final_dataset
from diff_trainer.metrics import add_perplexity, argmax_logits, token_accuracy_metrics
from diff_trainer.models.loading import add_special_tokens, load_tokenizer, model_config
from diff_trainer.objectives.block import BLOCK, check_rows_fit_blocks
from diff_trainer.training.args.data import DataArguments
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
from diff_trainer.training.args.model import ModelArguments
from diff_trainer.training.args.parsing import parse_arguments
from diff_trainer.training.model import prepare_model
from diff_trainer.training.runner import (
    check_output_dir,
    check_resumed_settings,
    nothing_to_run,
    run_entry_point,
    setup_logging,
    train_and_evaluate,
)
from diff_trainer.training.sharding import ShardedSaveTrainer
from diff_trainer.training.trainer import DiffusionTrainer

logger = logging.getLogger(__name__)


def main(argv=None):
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, DataArguments, DiffusionTrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    diffusion = training_args.train_diff_model
    if not data_args.preprocess_only:
        check_output_dir(training_args)

    raw = load_raw_datasets(data_args, seed=training_args.seed)
    char_level = model_args.tokenizer_name == CHAR_TOKENIZER
    tokenizer = load_tokenizer(model_args, training_texts(raw["train"], data_args) if char_level else None)
    template_ids = set_chat_template(tokenizer, data_args.chat_template) if data_args.chat_template else []
    new_token_ids = template_ids + add_special_tokens(
        tokenizer, data_args.dff_token, model_args.mask_token if diffusion else None
    )

    require_validation_data(raw, training_args.do_eval)
    config = model_config(model_args, tokenizer)
    if training_args.do_train and not data_args.preprocess_only:
        check_resumed_settings(training_args, tokenizer, config)  # the checkpoint's tokenizer and architecture
    if data_args.block_size is not None and config is not None:
        check_block_size(data_args.block_size, config)  # before packing: a huge block size would allocate first
    final, layout = Preprocessor(tokenizer, data_args, main_process_first=training_args.main_process_first).run(raw)
    if data_args.save_final_dataset and training_args.process_index == 0:
        save_final_dataset(
            final,
            data_args.save_final_dataset,
            overwrite=data_args.overwrite_final_dataset,
            num_proc=data_args.preprocessing_num_workers,
            extra_files={LAYOUT_FILE: layout.to_json()},
        )
    if data_args.preprocess_only:
        logger.info("Preprocessing only: done; the final rows are in %s.", data_args.save_final_dataset)
        return
    if nothing_to_run(training_args, "preprocessing only"):
        return
    train_dataset, eval_dataset = final["train"], final.get("validation")

    if diffusion and training_args.diffusion_objective == BLOCK:
        check_rows_fit_blocks(layout, training_args.diffusion_block_size)
    settings = (
        {**training_args.diffusion_settings(), "dff_token": data_args.dff_token, "row_packing": layout.packing}
        if diffusion
        else None
    )
    model = prepare_model(
        model_args,
        tokenizer,
        "diffusion" if diffusion else "causal",
        new_token_ids=new_token_ids,
        diffusion_settings=settings,
    )
    check_block_size(layout.block_size, model.config)
    datasets = {
        "train_dataset": train_dataset if training_args.do_train else None,
        "eval_dataset": eval_dataset if training_args.do_eval else None,
        "processing_class": tokenizer,
    }
    if diffusion:
        trainer = DiffusionTrainer(model, training_args, row_layout=layout, **datasets)
    else:
        trainer = ShardedSaveTrainer(
            model=model,
            args=training_args,
            compute_metrics=token_accuracy_metrics(shift=True),
            preprocess_logits_for_metrics=argmax_logits,
            **datasets,
        )

    train_and_evaluate(
        trainer,
        training_args,
        evaluate=eval_dataset is not None,
        add_eval_metrics=None if diffusion else add_perplexity,
    )


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
