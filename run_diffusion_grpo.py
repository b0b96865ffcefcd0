#!/usr/bin/env python
"""Train a masked-diffusion LM with GRPO: `python run_diffusion_grpo.py --help` (the code: diff_trainer/cli/grpo.py)."""

import sys

from diff_trainer.cli.grpo import main, run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main))
