"""Run plumbing shared by the entry scripts: error exit, logging set-up, checkpoint discovery, train/eval tail."""

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable

import datasets
import transformers
from transformers import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.loading import DataError
from ..data.pipeline import vocabulary_hash
from ..data.saving import check_writable, full_disk_error, process_alive
from ..diffusion_config import MASKED
from ..models.loading import load_saved_tokenizer
from .checkpoints import (
    CHECKPOINT_NAME,
    WEIGHT_FILES,
    CheckpointCompletionCallback,
    check_resumable,
    incomplete_reason,
    newest_complete_checkpoint,
    remove_weights,
)

logger = logging.getLogger(__name__)

OUTPUT_DIR_LOCK = "diff_trainer.lock"

# The evaluation metric to read first, per kind of run, and what it means (the first one present is logged).
HEADLINE_METRICS = (
    (
        "eval_elbo_perplexity",
        "ELBO perplexity bound per trained token: an upper bound on the diffusion model's "
        "perplexity, comparable with a causal model's perplexity on the same data (eval_loss is the loss on randomly "
        "masked tokens, a different quantity: do not compare it with a causal eval_loss)",
    ),
    ("perplexity", "perplexity per trained token (exp of eval_loss)"),
    ("eval_rewards/accuracies", "share of validation pairs whose chosen answer gets the higher reward"),
)


ERROR_REPORTED_KEY = "diff_trainer/error_reported"


def first_to_report() -> bool:
    """Whether this process should print its error: False when another process of the same distributed launch
    (torchrun / accelerate launch, this restart) already claimed it. The claim is a counter in the launcher's own
    store, which outlives the workers; without a launcher store (one process, other launchers) every process prints.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return True
    from datetime import timedelta

    from torch.distributed import TCPStore

    key = f"{ERROR_REPORTED_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    try:
        store = TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=10)
        )
        return store.add(key, 1) == 1
    except (KeyError, ValueError, RuntimeError):
        return True  # the store cannot be reached: better twice than never


def run_entry_point(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run an entry script's `main`: a DataError ends it with `error: message` on stderr and exit status 1 instead
    of a traceback (the message already names the file, record or flag). In a distributed launch every process
    exits with status 1 and only the first to fail prints the line. A distributed run leaves its process group
    before exiting, so no communication thread is still running at interpreter shutdown."""
    import torch.distributed

    try:
        main(argv)
    except DataError as error:
        if first_to_report():
            print(f"{os.path.basename(sys.argv[0]) or 'diff-trainer'}: error: {error}", file=sys.stderr)
        return 1
    finally:
        release_output_dir_locks()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def headline(metrics: dict) -> str | None:
    """A sentence naming the run's comparable evaluation metric and its value, or None when there is none."""
    for name, meaning in HEADLINE_METRICS:
        if name in metrics:
            return f"{name} = {metrics[name]:.4g}: {meaning}."
    return None


def setup_logging(training_args) -> None:
    """Log to stderr: our own messages at info on the main process (warning elsewhere), libraries at --log_level."""
    level = training_args.get_process_log_level()
    own_level = min(level, logging.INFO) if training_args.should_log else level
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stderr)],
        level=own_level,
    )
    for name in ("diff_trainer", "run_clm_diff", "run_diffusion_dpo"):
        logging.getLogger(name).setLevel(own_level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_explicit_format()


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` directory in output_dir, or None (then training starts fresh)."""
    found = newest_complete_checkpoint(output_dir)
    logging.getLogger(__name__).info(
        "Resuming from %s" if found else "No checkpoint in %s: starting fresh.", found or output_dir
    )
    return found


def nothing_to_run(training_args, done: str) -> bool:
    """True (and says so, naming what was done) when neither --do_train nor --do_eval is given."""
    if training_args.do_train or training_args.do_eval:
        return False
    logging.getLogger(__name__).info("Neither --do_train nor --do_eval: %s, done.", done)
    return True


class OutputDirLock:
    """`output_dir/diff_trainer.lock` held by one training run: host, pid, start time and Slurm job id as JSON.

    Created exclusively (O_EXCL); a lock left by a run that is gone is taken over: its pid is dead on this host (or is
    this very process, whose earlier run ended without releasing it), or it carries this process's SLURM_JOB_ID (the
    job was requeued, possibly onto another node). Released, when still ours, by `release_output_dir_locks`.
    """

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, OUTPUT_DIR_LOCK)
        self.made_directory = not os.path.isdir(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        job = os.environ.get("SLURM_JOB_ID")
        self.owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            **({"slurm_job_id": job} if job else {}),
        }

    def acquire(self) -> str | None:
        """Take the lock; None when taken, else a sentence naming the run that holds it."""
        while True:
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.read(self.path)
                if not self.is_stale(holder):
                    return self.refusal(holder)
                self.remove_stale(holder)
                continue
            with os.fdopen(handle, "w", encoding="utf-8") as lock_file:
                json.dump(self.owner, lock_file)
            return None

    @staticmethod
    def read(path: str) -> dict | None:
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # being written, or cut: treated as held

    def is_stale(self, holder: dict | None) -> bool:
        if holder is None:
            return True  # released meanwhile
        job = self.owner.get("slurm_job_id")
        if job and str(holder.get("slurm_job_id")) == job:
            return True
        if holder.get("host") != self.owner["host"] or not isinstance(holder.get("pid"), int):
            return False  # another machine: its process cannot be checked from here
        return holder["pid"] == os.getpid() or not process_alive(holder["pid"])

    def remove_stale(self, holder: dict | None) -> None:
        """Move the stale lock aside, putting it back if another run replaced it in between."""
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if self.read(aside) != holder:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        os.unlink(aside)

    def refusal(self, holder: dict) -> str:
        keys = ("host", "pid", "started", "slurm_job_id")
        who = ", ".join(f"{key} {holder[key]}" for key in keys if key in holder) or "an unreadable lock"
        return (
            f"--output_dir {os.path.dirname(self.path)} is in use by another training run ({who}); wait for it "
            f"to end or choose another --output_dir (if that run is gone, delete {self.path})."
        )

    def release(self) -> None:
        """Remove the lock when it is still ours, and the directory when the lock made it and it stayed empty."""
        if self.read(self.path) == self.owner:
            os.unlink(self.path)
        if self.made_directory and not os.listdir(os.path.dirname(self.path)):
            os.rmdir(os.path.dirname(self.path))


_held_locks: list[OutputDirLock] = []


def lock_output_dir(training_args) -> None:
    """Hold output_dir's lock for this training run (main process only; every process stops when it is held)."""
    import torch.distributed as dist

    refusal = None
    if training_args.process_index == 0:
        lock = OutputDirLock(training_args.output_dir)
        refusal = lock.acquire()
        if refusal is None:
            _held_locks.append(lock)
    if dist.is_available() and dist.is_initialized():
        message = [refusal]
        dist.broadcast_object_list(message, src=0)
        refusal = message[0]
    if refusal is not None:
        raise DataError(refusal)


def release_output_dir_locks() -> None:
    while _held_locks:
        _held_locks.pop().release()


# config.json fields that fix the shape of the weights (the names differ between architectures)
ARCHITECTURE = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "d_model",
    "num_layers",
    "num_heads",
    "d_ff",
)


def check_resumed_settings(training_args, tokenizer=None, config=None) -> None:
    """A DataError naming what differs when --resume (or --resume_from_checkpoint) would continue a checkpoint with
    other settings than it recorded in its config.json: another kind of model (causal or diffusion) or other
    diffusion settings, checked before any data is read; and, once the run's tokenizer and model `config` are known
    (called again with them, before preprocessing), another vocabulary, other special token ids or another
    architecture. (Without it the run fails on a weight shape, or silently rewrites the checkpoint's settings.)"""
    checkpoint = (
        training_args.resume_from_checkpoint
        if not training_args.resume
        else newest_complete_checkpoint(training_args.output_dir)
    )
    config_file = os.path.join(checkpoint, "config.json") if checkpoint else None
    if not config_file or not os.path.isfile(config_file):
        return
    with open(config_file, encoding="utf-8") as handle:
        saved_config = json.load(handle)
    differences = diffusion_differences(saved_config.get("diffusion_config"), training_args)
    if tokenizer is not None:
        differences += tokenizer_differences(checkpoint, saved_config, tokenizer, config)
    if config is not None:
        differences += [
            f"{key} {saved_config[key]!r} there, {getattr(config, key)!r} here"
            for key in ARCHITECTURE
            if key in saved_config and hasattr(config, key) and saved_config[key] != getattr(config, key)
        ]
    if differences:
        raise DataError(
            f"{checkpoint} cannot be resumed with these flags: {'; '.join(differences)}. Pass the "
            "checkpoint's settings, or train into another --output_dir."
        )


def diffusion_differences(saved: dict | None, training_args) -> list[str]:
    """How this run's kind of model and diffusion settings differ from a checkpoint's `diffusion_config` (DPO
    continues the policy's own settings: nothing to compare)."""
    if not hasattr(training_args, "diffusion_settings"):
        return []
    current = training_args.diffusion_settings() if training_args.train_diff_model else None
    kind = {True: "a diffusion model", False: "a causal LM"}
    if (saved is None) != (current is None):
        return [f"it is {kind[saved is not None]}, this run trains {kind[current is not None]}"]
    current = {"objective": MASKED, **(current or {})}  # SEDD settings name their own objective
    saved = {**(saved or {}), **({"sedd_noise": saved["noise"]} if "noise" in (saved or {}) else {})}
    return [
        f"{key} {saved[key]!r} there, {value!r} here"
        for key, value in current.items()
        if key in saved and saved[key] != value
    ]


def tokenizer_differences(checkpoint: str, saved_config: dict, tokenizer, config) -> list[str]:
    """How this run's tokenizer (with its added tokens) differs from the one the checkpoint was trained with: the
    vocabulary size the embeddings get, the special ids its config records, and, at equal size, the token -> id
    mapping of the checkpoint's saved tokenizer. Without the run's model `config` (a registered layout or an adapter
    is loaded as a model first) only a tokenizer larger than the checkpoint's embeddings is known to differ."""
    saved_size, differences = saved_config.get("vocab_size"), []
    if config is None and saved_size is not None and len(tokenizer) > saved_size:
        differences.append(f"a vocabulary of {saved_size} tokens there, {len(tokenizer)} here")
    size = max(len(tokenizer), getattr(config, "vocab_size", 0) or 0)  # what fit_to_tokenizer makes the embeddings
    if config is not None and saved_size not in (None, size):
        differences.append(f"a vocabulary of {saved_size} tokens there, {size} here")
    mask_id = (saved_config.get("diffusion_config") or {}).get("mask_token_id")
    here = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **({"mask_token_id": tokenizer.mask_token_id} if mask_id is not None and tokenizer.mask_token else {}),
    }
    there = {**saved_config, "mask_token_id": mask_id}
    differences += [
        f"{name} {there[name]!r} there, {value!r} here"
        for name, value in here.items()
        if there.get(name) is not None and there[name] != value
    ]
    if not differences and config is not None:
        try:
            saved_tokenizer = load_saved_tokenizer(checkpoint)
        except (OSError, ValueError):  # no tokenizer files to compare with: the sizes and ids above must do
            return differences
        if len(saved_tokenizer) == len(tokenizer) and vocabulary_hash(saved_tokenizer) != vocabulary_hash(tokenizer):
            differences.append(f"another tokenizer with the same {len(tokenizer)} tokens (other token -> id mapping)")
    return differences


def check_output_dir(training_args) -> None:
    """Refuse an output_dir where no file can be written; lock it for a training run, then refuse to train into one
    holding a model or checkpoints, unless --resume or --overwrite_output_dir.

    With --overwrite_output_dir the old checkpoint-N directories are deleted (by the main process) so that a later
    --resume cannot pick up a checkpoint of the replaced run.
    """
    output_dir = training_args.output_dir
    if training_args.do_train or training_args.do_eval:
        check_writable(output_dir, "--output_dir")
    if training_args.do_train:
        lock_output_dir(training_args)
        check_resumed_settings(training_args)
    if (
        not training_args.do_train
        or training_args.resume
        or training_args.resume_from_checkpoint
        or not os.path.isdir(output_dir)
    ):
        return
    found = sorted(
        name
        for name in os.listdir(output_dir)
        if name in ("config.json", "adapter_config.json") or name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
    )
    if not found:
        return
    if not training_args.overwrite_output_dir:
        raise DataError(
            f"--output_dir {output_dir} already holds a trained model ({', '.join(found[:3])}): pass "
            "--resume to continue its training, --overwrite_output_dir to replace it, or choose "
            "another --output_dir."
        )
    if training_args.process_index == 0:
        for name in found:
            if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
                shutil.rmtree(os.path.join(output_dir, name))
    logger.warning("--overwrite_output_dir: replacing the model in %s.", output_dir)


def reached_last_step(checkpoint: str, training_args) -> bool:
    """True (and says so) when `checkpoint` already holds the run's last step: --max_steps, or with epochs the step
    count its own run computed for the same --num_train_epochs (the Trainer would otherwise take one more step)."""
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    if training_args.max_steps > 0:
        last, flag = training_args.max_steps, f"--max_steps {training_args.max_steps}"
    elif state.get("num_train_epochs") == training_args.num_train_epochs:
        last, flag = state.get("max_steps"), f"--num_train_epochs {training_args.num_train_epochs:g}"
    else:
        return False
    if not last or state["global_step"] < last:
        return False
    logger.info(
        "%s already reached step %d of %s: nothing to train (raise %s to train further).",
        checkpoint,
        state["global_step"],
        flag,
        flag.split()[0],
    )
    return True


def load_finished_checkpoint(trainer, checkpoint: str) -> None:
    """Give the trainer the weights and state of a checkpoint at the run's last step (for --do_eval), and save them
    as the final model when a kill kept the run from saving it."""
    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    if not any(os.path.isfile(os.path.join(trainer.args.output_dir, name)) for name in WEIGHT_FILES):
        logger.info("Saving the weights of %s as the final model.", checkpoint)
        save_final_model(trainer)


def train_saving_checkpoints(trainer, checkpoint: str | None):
    """`trainer.train`; a full disk (or the file-size limit) while it writes a checkpoint is one DiskFull line, and
    the half-written checkpoint is removed, so the previous complete one is what --resume takes."""
    try:
        return trainer.train(resume_from_checkpoint=checkpoint)
    except DataError:
        raise
    except Exception as error:
        output_dir = trainer.args.output_dir
        path = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
        writing = path if os.path.isdir(path) and incomplete_reason(path) else output_dir
        full = full_disk_error(error, writing, "")
        if full is None:
            raise
        if writing == path and trainer.args.should_save:
            shutil.rmtree(path, ignore_errors=True)
        previous = newest_complete_checkpoint(output_dir)
        after = (
            f"{path} was removed. {previous} is complete: free space and continue with --resume."
            if writing == path and previous
            else "free space and continue with --resume."
            if previous
            else "no checkpoint was saved: free space and run again."
        )
        raise type(full)(f"{full}{after}") from error


def save_final_model(trainer, metrics: dict | None = None) -> None:
    """Write the final model (and the train metrics and state); on a full disk, one DiskFull line, and the weights
    of that save are removed, so no partial model is left in output_dir (a later --resume writes it again)."""
    output_dir = trainer.args.output_dir
    try:
        trainer.save_model()
        if metrics is not None:
            trainer.save_metrics("train", metrics)
        trainer.save_state()
    except DataError:
        raise
    except Exception as error:
        last = newest_complete_checkpoint(output_dir)
        step = int(CHECKPOINT_NAME.match(os.path.basename(last)).group(1)) if last else None
        after = (
            "no final model was saved, and no checkpoint either: free space and train again."
            if last is None
            else f"no final model was saved; {last} holds its weights: free space and run again with --resume, "
            "which saves the final model from it."
            if step == trainer.state.global_step
            else f"no final model was saved; {last} (step {step} of {trainer.state.global_step}) is the newest "
            "complete checkpoint: free space and run again with --resume to train on from it."
        )
        full = full_disk_error(error, output_dir, after)
        if full is None:
            raise
        if trainer.args.should_save:
            remove_weights(output_dir)
        raise full from error


def train_and_evaluate(
    trainer, training_args, *, evaluate: bool, add_eval_metrics: Callable[[dict], dict] | None = None
) -> None:
    """--do_train (resuming from output_dir's last checkpoint with --resume), save; then --do_eval, log, save."""
    if training_args.do_train:
        trainer.add_callback(CheckpointCompletionCallback())
        checkpoint = (last_checkpoint(training_args.output_dir) if training_args.resume else None) or (
            training_args.resume_from_checkpoint and check_resumable(training_args.resume_from_checkpoint)
        )
        if checkpoint and reached_last_step(checkpoint, training_args):
            load_finished_checkpoint(trainer, checkpoint)
        else:
            result = train_saving_checkpoints(trainer, checkpoint)
            trainer.log_metrics("train", result.metrics)
            save_final_model(trainer, result.metrics)
    if training_args.do_eval and evaluate:
        metrics = trainer.evaluate()
        if add_eval_metrics is not None:
            add_eval_metrics(metrics)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if headline(metrics):
            logger.info("Evaluation: %s", headline(metrics))
    if training_args.do_train:
        logger.info("Model saved to %s", training_args.output_dir)
