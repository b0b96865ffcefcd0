"""Run plumbing shared by the entry scripts: logging set-up, checkpoint discovery, the train/eval tail."""

import logging
import sys
from typing import Callable, Optional

import datasets
import transformers

from .checkpoints import CheckpointCompletionCallback, check_resumable, newest_complete_checkpoint


def setup_logging(training_args) -> None:
    """Log to stderr: our own messages at info on the main process (warning elsewhere), libraries at --log_level."""
    level = training_args.get_process_log_level()
    own_level = min(level, logging.INFO) if training_args.should_log else level
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stderr)], level=own_level)
    for name in ("diff_trainer", "run_clm_diff", "run_diffusion_dpo"):
        logging.getLogger(name).setLevel(own_level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_explicit_format()


def last_checkpoint(output_dir: str) -> Optional[str]:
    """The newest complete `checkpoint-N` directory in output_dir, or None (then training starts fresh)."""
    found = newest_complete_checkpoint(output_dir)
    logging.getLogger(__name__).info("Resuming from %s" if found else "No checkpoint in %s: starting fresh.",
                                     found or output_dir)
    return found


def nothing_to_run(training_args, done: str) -> bool:
    """True (and says so, naming what was done) when neither --do_train nor --do_eval is given."""
    if training_args.do_train or training_args.do_eval:
        return False
    logging.getLogger(__name__).info("Neither --do_train nor --do_eval: %s, done.", done)
    return True


def train_and_evaluate(trainer, training_args, *, evaluate: bool,
                       add_eval_metrics: Optional[Callable[[dict], dict]] = None) -> None:
    """--do_train (resuming from output_dir's last checkpoint with --resume), save; then --do_eval, log, save."""
    if training_args.do_train:
        trainer.add_callback(CheckpointCompletionCallback())
        checkpoint = (last_checkpoint(training_args.output_dir) if training_args.resume else None) or \
            (training_args.resume_from_checkpoint and check_resumable(training_args.resume_from_checkpoint))
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval and evaluate:
        metrics = trainer.evaluate()
        if add_eval_metrics is not None:
            add_eval_metrics(metrics)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
