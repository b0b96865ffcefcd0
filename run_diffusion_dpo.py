#!/usr/bin/env python
"""Preference-tune a masked-diffusion LM with VRPO: `python run_diffusion_dpo.py --help` (the code: diff_trainer/cli/dpo.py)."""
import sys

from diff_trainer.cli.dpo import main, run_entry_point

if __name__ == "__main__":
    sys.exit(run_entry_point(main))
