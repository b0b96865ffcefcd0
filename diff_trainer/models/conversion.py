"""Load LLaDA and Dream checkpoints, as published with remote code, as native transformers models.

`LLADA_LOADER` and `DREAM_LOADER` recognise a checkpoint (a local directory or a hub name) by its config.json and
build a Llama / Qwen2 model with full attention from it: the config is mapped field by field, the weights are
renamed while they are read (shard by shard, straight into the model, no second copy), and the config gets a
`diffusion_config` (mask id, shift, stop ids), so the result is a self-describing diffusion checkpoint once saved.
No code from the checkpoint is run. `convert_checkpoint` writes the converted model and tokenizer once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from ..data.io import staged_directory
from ..devices import torch_dtype
from ..diffusion_config import write_diffusion_config
from . import dream, llada
from .registry import CheckpointLoader, register_loader

CONFIG_FILE = "config.json"
# Weight files in the order they are looked for; an index names the shards.
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# What to download for a hub name: configs, tokenizer files and weights, never the remote code.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
NOISE_SCHEDULE = "linear"  # LLaDA and Dream are trained with p_mask = t
TIME_EPS = 1e-3


@dataclass(frozen=True)
class ReleasedLayout:
    """Recognises one published layout and loads it as a native transformers model.

    `family` is the module holding the layout's config mapping, weight names and default mask id (`llada` or `dream`);
    `tokenizer_class` is the transformers class that reads its tokenizer files without the checkpoint's code.
    """

    name: str
    family: ModuleType
    shift_logits: bool
    tokenizer_class: str

    def matches(self, path) -> bool:
        """Whether `path` (directory or hub name) holds a checkpoint in this layout."""
        raw = _read_config(path)
        return raw is not None and raw.get("model_type") in self.family.MODEL_TYPES

    def load(
        self,
        path,
        *,
        dtype=torch.float32,
        device=None,
        attn_implementation=None,
        trust_remote_code: bool = False,
        merge_lora: bool = False,
    ):
        """The checkpoint as a native bidirectional model in eval mode.

        `dtype`: a torch dtype, a name ("bfloat16"), or "auto"/None for the stored one. `trust_remote_code` and
        `merge_lora` belong to the common loader signature (models.registry) and change nothing here:
        no code from the checkpoint is run, and a released checkpoint has no adapter to merge.
        """
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        directory = local_directory(path)
        config = self.config(directory)
        target_dtype = torch_dtype(dtype)
        options = {"attn_implementation": attn_implementation} if attn_implementation else {}
        with init_empty_weights():  # parameters on the meta device, rotary buffers computed as usual
            model = AutoModelForCausalLM.from_config(config, dtype=target_dtype or torch.float32, **options)
        _load_weights(model, directory, self.family.native_weight_name, target_dtype, device)
        if target_dtype is None:
            model.config.dtype = model.get_input_embeddings().weight.dtype
        model.config._name_or_path = str(path)
        if device is not None:
            model.to(device)
        return model.eval()

    def config(self, path):
        """The native config (Llama / Qwen2) with full attention and the `diffusion_config` of this layout."""
        directory = local_directory(path)
        raw = _read_json(directory / CONFIG_FILE)
        config = self.family.native_config(raw)
        write_diffusion_config(
            config,
            mask_token_id=self.mask_token_id(raw),
            shift_logits=self.shift_logits,
            noise_schedule=NOISE_SCHEDULE,
            time_eps=TIME_EPS,
            dff_token=None,
            eos_token_ids=stop_token_ids(raw, directory, self.family.EXTRA_STOP_TOKENS),
        )
        config.architectures = None
        return config

    def mask_token_id(self, raw: dict) -> int:
        """config.json's mask_token_id, or the layout's released one when config.json does not say."""
        return int(raw.get("mask_token_id", self.family.MASK_TOKEN_ID))

    def load_tokenizer(self, path):
        """The checkpoint's tokenizer with its mask token set to the diffusion mask id."""
        import transformers

        directory = local_directory(path)
        tokenizer = getattr(transformers, self.tokenizer_class).from_pretrained(directory)
        tokenizer.init_kwargs.pop("auto_map", None)  # saved copies must not point at the remote tokenizer code
        mask_id = self.mask_token_id(_read_json(directory / CONFIG_FILE))
        if tokenizer.mask_token is None:
            tokenizer.mask_token = tokenizer.convert_ids_to_tokens(mask_id)
        if tokenizer.mask_token_id != mask_id:
            raise ValueError(
                f"{directory}: the tokenizer's mask token {tokenizer.mask_token!r} has id "
                f"{tokenizer.mask_token_id}, but config.json's mask_token_id is {mask_id}."
            )
        return tokenizer


LLADA_LOADER = ReleasedLayout("LLaDA", llada, shift_logits=False, tokenizer_class="PreTrainedTokenizerFast")
DREAM_LOADER = ReleasedLayout("Dream", dream, shift_logits=True, tokenizer_class="Qwen2Tokenizer")
LOADERS = (LLADA_LOADER, DREAM_LOADER)
for _layout in LOADERS:
    register_loader(CheckpointLoader(_layout.matches, _layout.load, load_tokenizer=_layout.load_tokenizer))


def find_loader(path) -> ReleasedLayout | None:
    """The loader for a LLaDA / Dream checkpoint at `path`, or None for anything else."""
    if path is None:
        return None
    return next((loader for loader in LOADERS if loader.matches(path)), None)


@dataclass(frozen=True)
class Conversion:
    """What `convert_checkpoint` wrote."""

    output_dir: Path
    source_layout: str  # "LLaDA" or "Dream"
    architecture: str  # the native class, e.g. "LlamaForCausalLM"
    parameters: int
    dtype: torch.dtype

    def summary(self) -> str:
        size = self.parameters * torch.finfo(self.dtype).bits // 8
        return (
            f"{self.output_dir}: {self.source_layout} as {self.architecture}, {self.parameters / 1e9:.2f}B "
            f"parameters, {size / 1e9:.1f} GB in {str(self.dtype).removeprefix('torch.')}"
        )


def convert_checkpoint(
    source, output_dir, *, dtype="auto", overwrite: bool = False, max_shard_size: str = "5GB"
) -> Conversion:
    """Write `source` (LLaDA / Dream, directory or hub name) as a native checkpoint with its tokenizer.

    The files are written to a temporary directory next to `output_dir` and moved into place at the end, so an
    interrupted conversion leaves nothing that loads.
    """
    loader = find_loader(source)
    if loader is None:
        raise ValueError(
            f"{source} is not a LLaDA or Dream checkpoint: its config.json has model_type "
            f"{(_read_config(source) or {}).get('model_type')!r}, expected one of "
            f"{[t for entry in LOADERS for t in entry.family.MODEL_TYPES]}."
        )
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty: choose another output or pass --overwrite.")
    model = loader.load(source, dtype=dtype)
    tokenizer = loader.load_tokenizer(source)
    with staged_directory(output_dir) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(staging)
    return Conversion(output_dir, loader.name, type(model).__name__, model.num_parameters(), model.dtype)


def stop_token_ids(raw: dict, directory: Path, extra_tokens) -> list[int]:
    """config.json's EOS id(s) followed by the ids of `extra_tokens` found in the tokenizer files."""
    eos = raw.get("eos_token_id")
    ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    special = special_token_ids(directory)
    ids += [special[token] for token in extra_tokens if token in special]
    return list(dict.fromkeys(ids))


def special_token_ids(directory: Path) -> dict[str, int]:
    """Added-token ids by content, read from tokenizer.json and tokenizer_config.json when present."""
    ids = {}
    tokenizer_json = directory / "tokenizer.json"
    if tokenizer_json.is_file():
        ids.update({entry["content"]: entry["id"] for entry in _read_json(tokenizer_json).get("added_tokens", [])})
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.is_file():
        decoder = _read_json(tokenizer_config).get("added_tokens_decoder", {})
        ids.update({entry["content"]: int(token_id) for token_id, entry in decoder.items()})
    return ids


def local_directory(path) -> Path:
    """A local directory holding the checkpoint: `path` itself, or the download of a hub name (no code files)."""
    if os.path.isdir(path):
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path), allow_patterns=DOWNLOAD_PATTERNS))


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files: the shards an index names, or the single file."""
    for index in WEIGHT_INDEXES:
        if (directory / index).is_file():
            shards = sorted(set(_read_json(directory / index)["weight_map"].values()))
            missing = [shard for shard in shards if not (directory / shard).is_file()]
            if missing:
                raise FileNotFoundError(f"{directory / index} names shards that are missing: {missing}.")
            return [directory / shard for shard in shards]
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return [directory / name]
    raise FileNotFoundError(f"{directory} has no weights: expected one of {list(WEIGHT_INDEXES + WEIGHT_FILES)}.")


def read_tensors(path: Path, device=None):
    """(name, tensor) pairs of one weight file, read one at a time."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device or "cpu")) as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
    else:
        yield from torch.load(path, map_location=device or "cpu", weights_only=True, mmap=True).items()


def _load_weights(model, directory: Path, native_name, dtype, device) -> None:
    """Fill the meta-device parameters of `model` from the checkpoint, renaming and checking every tensor."""
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    tied = model.config.tie_word_embeddings
    if tied:
        expected.pop("lm_head.weight", None)
    state = {}
    for path in weight_files(directory):
        for name, tensor in read_tensors(path, device):
            try:
                target = native_name(name)
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None
            if target not in expected:
                raise ValueError(f"{path}: tensor {name!r} maps to {target!r}, which this model does not have.")
            if tuple(tensor.shape) != tuple(expected[target]):
                raise ValueError(
                    f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, but config.json implies "
                    f"{tuple(expected[target])} for {target!r}."
                )
            state[target] = tensor if dtype is None else tensor.to(dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{directory}: the checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}.")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()


def _read_config(path) -> dict | None:
    """config.json of a directory or hub name, or None when there is none to read."""
    if path is None:
        return None
    if os.path.isdir(path):
        config_path = Path(path) / CONFIG_FILE
        return _read_json(config_path) if config_path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return _read_json(Path(hf_hub_download(str(path), CONFIG_FILE)))
    except Exception:  # not a hub name, offline, or no config.json: not a checkpoint this module loads
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None
