"""`import diff_trainer` is light: the data scripts (and their worker processes) start without torch or transformers
(`import diff_trainer.models` registers the model classes; tests/models/ load checkpoints after it)."""

import subprocess
import sys

LIGHT_MODULES = ["diff_trainer.data.io", "diff_trainer.training.rewards"]  # what the data scripts import


def imported_after(code: str) -> set[str]:
    """The top-level packages among torch/transformers/datasets that a fresh interpreter holds after `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{'torch', 'transformers', 'datasets'}} & set(sys.modules))))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_the_data_scripts_modules_import_neither_torch_nor_transformers():
    assert imported_after("\n".join(f"import {module}" for module in LIGHT_MODULES)) == set()
