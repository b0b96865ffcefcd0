"""Shared fixtures: a byte-level tokenizer and tiny randomly initialised models (no downloads)."""

import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`-n auto`) the workers already fill the cores: one thread each, also in their subprocesses.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)

DFF = "<DFF>"
MASK = "<|mdm_mask|>"


def make_byte_tokenizer(dff: bool = True, mask: bool = True):
    """ByT5's byte tokenizer (needs no files) with <DFF> and the mask token as single special ids."""
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    extra = [t for t, keep in ((DFF, dff), (MASK, mask)) if keep]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    if mask:
        tokenizer.mask_token = MASK
    return tokenizer


def make_tiny_llama(vocab_size: int, bidirectional: bool = True, seed: int = 0, **overrides):
    """A 2-layer Llama with hidden size 32, randomly initialised from `seed`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    settings.update(overrides)
    config = LlamaConfig(**settings)
    config.is_causal = not bidirectional
    return AutoModelForCausalLM.from_config(config).eval()


def masked_diffusion_config(tokenizer, **overrides) -> dict:
    """The `diffusion_config` of a masked-diffusion checkpoint using `tokenizer`'s mask token and <DFF>."""
    return {
        "objective": "masked_diffusion",
        "mask_token_id": tokenizer.mask_token_id,
        "shift_logits": False,
        "noise_schedule": "linear",
        "time_eps": 1e-3,
        "dff_token": DFF,
        **overrides,
    }


def make_tiny_sedd(tokenizer, graph: str):
    """A tiny score-entropy checkpoint: absorbing (a time-blind Llama read through RADD) or uniform
    (time-conditioned)."""
    from diff_trainer.objectives.sedd import prepare_sedd_model

    return prepare_sedd_model(
        make_tiny_llama(len(tokenizer), seed=2),
        tokenizer,
        objective=f"sedd_{graph}",
        sedd_noise="loglinear" if graph == "absorb" else "geometric",
        sigma_min=1e-4,
        sigma_max=20.0,
        sedd_scale_by_sigma=False,
        time_eps=1e-3,
        dff_token="<DFF>",
        auto_class="AutoModelForCausalLM",
        masked_lm=False,
    ).eval()


def save_checkpoint(directory, model, tokenizer):
    """`model` and `tokenizer` saved side by side in `directory` (returned)."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def accelerate_launch(directory, num_processes: int = 2) -> list[str]:
    """`accelerate launch` of CPU processes with an explicit config file written to `directory`.

    The config names every setting, so a user's ~/.cache/huggingface/accelerate/default_config.yaml cannot change
    the run; start the command with CUDA_VISIBLE_DEVICES= in its environment.
    """
    config = os.path.join(str(directory), "accelerate_cpu.yaml")
    with open(config, "w") as handle:
        handle.write(
            f"compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: {num_processes}\n"
            "num_machines: 1\nmachine_rank: 0\nmixed_precision: 'no'\ndynamo_config: {}\nuse_cpu: false\n"
            "gpu_ids: all\nrdzv_backend: static\nsame_network: true\nmain_training_function: main\n"
        )
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--main_process_port", "0"]


def pytest_collection_modifyitems(items):
    """Tests marked `long` first: under pytest-xdist (`-n auto`) each then starts a worker's share of the suite, and
    the other workers take over that worker's pending tests (`--dist worksteal`) while it runs."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def count_forward_passes(monkeypatch) -> list:
    """Hook the model the CLIs' loader (`cli.generate.open_checkpoint`) returns; the list grows by one per forward."""
    from diff_trainer.cli import generate as cli_module

    calls = []
    open_checkpoint = cli_module.open_checkpoint

    def counting_open(path, **kwargs):
        model, tokenizer, settings = open_checkpoint(path, **kwargs)
        model.register_forward_hook(lambda *_: calls.append(1))
        return model, tokenizer, settings

    monkeypatch.setattr(cli_module, "open_checkpoint", counting_open)
    return calls


@pytest.fixture(scope="session", autouse=True)
def isolated_hf_home(tmp_path_factory):
    """Caches and accelerate's default config live under pytest's tmp dir, not the user's ~/.cache/huggingface.

    The environment reaches subprocesses (accelerate launch, sbatch jobs); the libraries already imported here read
    their patched config attributes.
    """
    import datasets.config
    import evaluate.config

    home = tmp_path_factory.mktemp("hf_home")
    patch = pytest.MonkeyPatch()
    paths = {
        "HF_HOME": home,
        "HF_DATASETS_CACHE": home / "datasets",
        "HF_MODULES_CACHE": home / "modules",
        "HF_EVALUATE_CACHE": home / "evaluate",
        "HF_METRICS_CACHE": home / "metrics",
    }
    for name, path in paths.items():
        patch.setenv(name, str(path))
    for module in (datasets.config, evaluate.config):
        for name, path in paths.items():
            if hasattr(module, name):
                patch.setattr(module, name, path)
    yield home
    patch.undo()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Saved random tiny Llamas (context 64) with the byte tokenizer, for tests that only read them:
    `diffusion` (masked diffusion) and `causal` (no diffusion_config)."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    tokenizer = make_byte_tokenizer()
    diffusion = make_tiny_llama(len(tokenizer), max_position_embeddings=64)
    diffusion.config.diffusion_config = masked_diffusion_config(tokenizer)
    save_checkpoint(root / "diffusion", diffusion, tokenizer)
    save_checkpoint(
        root / "causal", make_tiny_llama(len(tokenizer), bidirectional=False, max_position_embeddings=64), tokenizer
    )
    return root


@pytest.fixture
def byte_tokenizer():
    return make_byte_tokenizer()


@pytest.fixture
def tiny_llama(byte_tokenizer):
    return make_tiny_llama(len(byte_tokenizer))
