"""Several entry points one after another in the same launched processes (one process group), so a test of many
settings pays for one `accelerate launch`: `launched_runs.py RUNS.json`, a JSON list of [module, flags], each module
an entry point with `main(argv)` (e.g. diff_trainer.cli.train). tests/fsdp_on_cpu.py takes the same file."""

import importlib
import json
import sys


def run_all(path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        for module, flags in json.load(handle):
            importlib.import_module(module).main(flags)


if __name__ == "__main__":
    run_all(sys.argv[1])
