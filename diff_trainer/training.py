"""Run plumbing shared by the entry scripts: logging set-up and checkpoint discovery."""

import logging
import os
import sys
from typing import Optional

import datasets
import transformers
from transformers.trainer_utils import get_last_checkpoint


def setup_logging(training_args) -> None:
    """Log to stderr at the Trainer's level for this process (main process: info, others: warning)."""
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stderr)], level=level)
    logging.getLogger("diff_trainer").setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_explicit_format()


def last_checkpoint(output_dir: str) -> Optional[str]:
    """The newest `checkpoint-N` directory in output_dir, or None (then training starts fresh)."""
    if not os.path.isdir(output_dir):
        return None
    found = get_last_checkpoint(output_dir)
    logging.getLogger(__name__).info("Resuming from %s" if found else "No checkpoint in %s: starting fresh.",
                                     found or output_dir)
    return found
