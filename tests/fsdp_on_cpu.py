"""Run an entry script under accelerate's FSDP plugin on CPU processes (gloo).

Usage: `python tests/fsdp_on_cpu.py SCRIPT ARGS`, or `python tests/fsdp_on_cpu.py RUNS.json` for several runs in the
same processes (tests/launched_runs.py).

accelerate only turns FSDP on for accelerator-backed process groups; torch's `fully_shard` itself runs on CPU
with gloo. This wrapper lets the launched CPU processes take the FSDP path, so the sharded code of the Trainer
(wrapping, sharded state dicts, resume) is exercised by the CPU test suite. Only tests use it.
"""

import runpy
import sys

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

_original_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    if sys.argv[1].endswith(".json"):
        from launched_runs import run_all  # tests/ is the script's directory, first on sys.path

        run_all(sys.argv[1])
    else:
        script = sys.argv[1]
        sys.argv = sys.argv[1:]
        runpy.run_path(script, run_name="__main__")
