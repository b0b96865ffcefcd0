"""Checkpoints a resume (or a Slurm requeue) can trust.

`CheckpointCompletionCallback` writes `checkpoint-N/COMPLETE` after everything of the checkpoint is on disk (every
process reached the save), so a checkpoint killed while being written has no marker. `newest_complete_checkpoint`
picks the newest checkpoint that is complete and logs each newer one it skipped and why. A checkpoint without the
marker (written before this callback existed) counts as complete when its `trainer_state.json` reads back with its
own step and a weights file is present: the Trainer writes that state file last.
"""

import json
import logging
import math
import os
import re

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from ..data.loading import DataError
from ..models.registry import CheckpointError

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)

WEIGHT_FILE = re.compile(r"(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?")


def remove_weights(directory: str) -> None:
    """Delete the weight files (shards and indexes included) of a model directory."""
    for name in os.listdir(directory):
        if WEIGHT_FILE.fullmatch(name):
            os.unlink(os.path.join(directory, name))


class CheckpointCompletionCallback(TrainerCallback):
    """Marks each saved checkpoint complete, on the main process, once every process has finished saving."""

    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # other processes may still be writing their RNG state
        if state.is_world_process_zero:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(path):
                write_marker(path, state.global_step)
        return control


class NonFiniteTraining(DataError):
    """The loss or the gradient norm of a training step is NaN or inf."""


class FiniteStepsMixin:
    """Stops training at the first step whose loss (on any process) or gradient norm is NaN or inf, before the
    optimizer applies it: the checkpoints on disk stay those of the last good step, and the error ends the run before
    a final model is saved; weights that hold NaN or inf are never saved. With fp16 loss scaling an infinite gradient
    norm is the scaler's business (it skips that step), so there only the loss is checked."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Refuse to write weights holding NaN or inf (an optimizer step can overflow them with a finite loss)."""
        with torch.no_grad():  # each process checks its own shards (FSDP2 parameters are DTensors)
            local = [p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters()]
            bad = sum((~torch.isfinite(p)).any().float() for p in local if p.is_floating_point())
        bad = self.accelerator.reduce(torch.as_tensor(bad, device=self.accelerator.device).float().reshape(1), "sum")
        if float(bad) > 0:
            raise NonFiniteTraining(
                f"the weights hold NaN or inf values after step {self.state.global_step}; "
                f"nothing was saved. Usual causes: {self.non_finite_causes()}"
            )
        return super().save_model(output_dir, _internal_call)

    def non_finite_causes(self) -> str:
        return (
            "a --learning_rate too high for this model (lower it or add --warmup_steps), fp16 overflow (use "
            "bf16 or float32), or bad data (very long or empty rows). No final model was saved; the checkpoint-N "
            f"directories in {self.args.output_dir}, if any, hold weights of earlier steps."
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss.detach()).all()
        self._finite_losses = finite if getattr(self, "_finite_losses", None) is None else self._finite_losses & finite
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        losses_ok, self._finite_losses = self._finite_losses, None
        bad_loss = (~losses_ok).float().reshape(1) if losses_ok is not None else torch.zeros(1)
        bad_loss = self.accelerator.reduce(bad_loss.to(self.accelerator.device), reduction="sum")
        step, causes = self.state.global_step + 1, self.non_finite_causes()
        if float(bad_loss) > 0:
            raise NonFiniteTraining(f"the training loss is NaN or inf at step {step}. Usual causes: {causes}")
        scaled = self.accelerator.scaler is not None
        if grad_norm is not None and not scaled and not math.isfinite(float(grad_norm)):
            raise NonFiniteTraining(f"the gradient norm is {float(grad_norm)} at step {step}. Usual causes: {causes}")
        return grad_norm


def write_marker(path: str, step: int) -> None:
    """Write the marker through a temporary file and a rename, so the marker itself is never half-written."""
    temporary = os.path.join(path, f".{COMPLETE_MARKER}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"global_step": step}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(path, COMPLETE_MARKER))


def incomplete_reason(path: str) -> str | None:
    """Why the checkpoint directory at `path` cannot be resumed from (None when it is complete)."""
    step = int(CHECKPOINT_NAME.match(os.path.basename(path)).group(1))
    if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
        return None
    state_file = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state_file):
        return f"no {COMPLETE_MARKER} marker and no trainer_state.json (killed while saving?)"
    try:
        with open(state_file, encoding="utf-8") as handle:
            saved_step = json.load(handle).get("global_step")
    except (OSError, ValueError) as error:
        return f"no {COMPLETE_MARKER} marker and an unreadable trainer_state.json ({error})"
    if saved_step != step:
        return f"no {COMPLETE_MARKER} marker and trainer_state.json says step {saved_step}, not {step}"
    if not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES):
        return f"no {COMPLETE_MARKER} marker and no weights file ({', '.join(WEIGHT_FILES[::2])})"
    return None


def checkpoint_directories(output_dir: str) -> list[str]:
    """The `checkpoint-N` directories of output_dir, newest (highest N) first."""
    found = [
        name
        for name in os.listdir(output_dir)
        if CHECKPOINT_NAME.match(name) and os.path.isdir(os.path.join(output_dir, name))
    ]
    found.sort(key=lambda name: int(CHECKPOINT_NAME.match(name).group(1)), reverse=True)
    return [os.path.join(output_dir, name) for name in found]


def newest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` in output_dir (None: none, start fresh); skipped newer ones are logged."""
    if not os.path.isdir(output_dir):
        return None
    for path in checkpoint_directories(output_dir):
        reason = incomplete_reason(path)
        if reason is None:
            return path
        logger.warning("Skipping incomplete checkpoint %s: %s.", path, reason)
    return None


def check_resumable(path: str) -> str:
    """`path` when it is a complete checkpoint; a CheckpointError saying why not (for --resume_from_checkpoint PATH)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"--resume_from_checkpoint {path}: no such directory.")
    if not CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(path))):
        return path  # not one of ours: let the Trainer judge it
    reason = incomplete_reason(os.path.normpath(path))
    if reason:
        raise CheckpointError(
            f"--resume_from_checkpoint {path} is incomplete: {reason}. Pick an older checkpoint, "
            "or use --resume to take the newest complete one."
        )
    return path
