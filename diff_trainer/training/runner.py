"""Run plumbing shared by the entry scripts: error exit, logging set-up, checkpoint discovery, train/eval tail."""

import logging
import os
import shutil
import sys
from typing import Callable, Optional

import datasets
import transformers
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import CheckpointCompletionCallback, check_resumable, newest_complete_checkpoint
from ..data.loading import DataError

logger = logging.getLogger(__name__)

# The evaluation metric to read first, per kind of run, and what it means (the first one present is logged).
HEADLINE_METRICS = (
    ("eval_elbo_perplexity", "ELBO perplexity bound per trained token: an upper bound on the diffusion model's "
     "perplexity, comparable with a causal model's perplexity on the same data (eval_loss is the loss on randomly "
     "masked tokens, a different quantity: do not compare it with a causal eval_loss)"),
    ("perplexity", "perplexity per trained token (exp of eval_loss)"),
    ("eval_rewards/accuracies", "share of validation pairs whose chosen answer gets the higher reward"),
)


def run_entry_point(main: Callable[[Optional[list[str]]], object], argv: Optional[list[str]] = None) -> int:
    """Run an entry script's `main`: a DataError ends it with `error: message` on stderr and exit status 1 instead
    of a traceback (the message already names the file, record or flag). A distributed run leaves its process
    group before exiting, so no communication thread is still running at interpreter shutdown."""
    import torch.distributed

    try:
        main(argv)
    except DataError as error:
        print(f"{os.path.basename(sys.argv[0]) or 'diff-trainer'}: error: {error}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def headline(metrics: dict) -> Optional[str]:
    """A sentence naming the run's comparable evaluation metric and its value, or None when there is none."""
    for name, meaning in HEADLINE_METRICS:
        if name in metrics:
            return f"{name} = {metrics[name]:.4g}: {meaning}."
    return None


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


def check_output_dir(training_args) -> None:
    """Refuse to train into an output_dir holding a model or checkpoints, unless --resume or --overwrite_output_dir.

    With --overwrite_output_dir the old checkpoint-N directories are deleted (by the main process) so that a later
    --resume cannot pick up a checkpoint of the replaced run.
    """
    output_dir = training_args.output_dir
    if (not training_args.do_train or training_args.resume or training_args.resume_from_checkpoint
            or not os.path.isdir(output_dir)):
        return
    found = sorted(name for name in os.listdir(output_dir)
                   if name in ("config.json", "adapter_config.json") or name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"))
    if not found:
        return
    if not training_args.overwrite_output_dir:
        raise ValueError(f"--output_dir {output_dir} already holds a trained model ({', '.join(found[:3])}): pass "
                         "--resume to continue its training, --overwrite_output_dir to replace it, or choose "
                         "another --output_dir.")
    if training_args.process_index == 0:
        for name in found:
            if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
                shutil.rmtree(os.path.join(output_dir, name))
    logger.warning("--overwrite_output_dir: replacing the model in %s.", output_dir)


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
        if headline(metrics):
            logger.info("Evaluation: %s", headline(metrics))
    if training_args.do_train:
        logger.info("Model saved to %s", training_args.output_dir)
