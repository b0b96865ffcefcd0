"""Several `run_clm_diff.py` runs one after another in the same launched processes (one process group), so a test
of many settings under DDP pays for one `accelerate launch`: `ddp_runs.py RUNS.json`, a JSON list of flag lists."""

import json
import sys

from diff_trainer.cli.train import main

if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        for flags in json.load(handle):
            main(flags)
