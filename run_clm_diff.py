#!/usr/bin/env python
"""Train a causal or diffusion LM: `python run_clm_diff.py --help` (the code: diff_trainer/cli/train.py)."""

import sys

from diff_trainer.cli.train import main, run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main))
