#!/usr/bin/env python
"""Preference-tune a diffusion LM with VRPO: `python run_diffusion_dpo.py --help` (code: diff_trainer/cli/dpo.py)."""

import sys

from diff_trainer.cli.dpo import main, run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main))
