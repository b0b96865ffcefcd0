"""Tokenizers and models from names, directories and checkpoints: one place for every reader of checkpoints.

`load_tokenizer(model_args)` and `load_model(model_args, tokenizer)` build or load what training starts from (the
right auto class, fitted to the tokenizer). `load_checkpoint(path)` loads a trained checkpoint (plain directory or
adapter-only PEFT directory, causal LM or encoder) for the commands and the DPO reference; layouts registered in
`models.registry` (LLaDA, Dream, SEDD) are consulted first.
"""

import json
import logging
import os

import torch
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    ByT5Tokenizer,
    PretrainedConfig,
)
from transformers.models.auto.tokenization_auto import get_tokenizer_config

from ..data.char_tokenizer import CHAR_TOKENIZER, CharTokenizer, build_char_tokenizer
from ..data.loading import DataError
from ..devices import resolve_device, torch_dtype
from ..diffusion_config import auto_class_name, masked_lm_problem
from .registry import CheckpointLoader, registered_loader

BYTE_TOKENIZER = "byte"
FALLBACK_EOS_TOKEN = "<|endoftext|>"
# Config attribute names that hold a dropout probability: attention_dropout, hidden_dropout_prob, resid_pdrop, ...
DROPOUT_NAME_ENDINGS = ("dropout", "dropout_prob", "dropout_rate", "pdrop")
SPECIAL_TOKEN_ID_NAMES = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "cls_token_id",
    "mask_token_id",
)
# the classes of the auto class names a checkpoint's diffusion_config may record (diffusion_config.AUTO_CLASS_NAMES)
AUTO_CLASSES = {"AutoModelForCausalLM": AutoModelForCausalLM, "AutoModelForMaskedLM": AutoModelForMaskedLM}
# The tokenizers built here without vocabulary files (--tokenizer_name byte / char), by the class name saved in
# tokenizer_config.json. AutoTokenizer does not always honour that name: transformers 5 gives a qwen2 checkpoint
# Qwen2's own tokenizer class whatever the file says, which would silently re-tokenise a byte-level model.
FILE_FREE_TOKENIZERS = {"ByT5Tokenizer": ByT5Tokenizer, "CharTokenizer": CharTokenizer}
ADAPTER_CONFIG = "adapter_config.json"

logger = logging.getLogger(__name__)


def check_model_source(name_or_path: str, flag: str) -> None:
    """Fail with one plain sentence when `name_or_path` is meant as a local checkpoint directory that is not there.

    A name is taken as local when it exists, starts with '.', '/' or '~', has more than one '/', or its parent
    directory exists; otherwise it may be a hub id ('gpt2', 'org/model') and is left to from_pretrained.
    """
    if os.path.isdir(name_or_path):
        return
    if os.path.exists(name_or_path):
        raise FileNotFoundError(f"{flag} {name_or_path} is a file; give the checkpoint's directory.")
    parent = os.path.dirname(name_or_path.rstrip("/"))
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or (parent and os.path.isdir(parent)):
        raise FileNotFoundError(
            f"{flag}: no checkpoint at {name_or_path} (no such directory). Train or download it "
            "first, or correct the path."
        )


def load_tokenizer(model_args, train_texts=None):
    """The tokenizer of `tokenizer_name` (or the model's), a file-free byte tokenizer for "byte", or for "char" a
    character tokenizer built from `train_texts` (the training split).

    The result always has an EOS token, and uses EOS for padding when it has no pad token.
    """
    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name is None:
        raise ValueError(
            "No tokenizer to load: pass --tokenizer_name (a hub id, a directory, or 'byte') or --model_name_or_path."
        )
    if (fitted := _layout_tokenizer_for_ids(model_args.model_name_or_path, model_args.tokenizer_name)) is not None:
        tokenizer = fitted
    elif name == BYTE_TOKENIZER:
        tokenizer = ByT5Tokenizer()
    elif name == CHAR_TOKENIZER:
        if train_texts is None:
            raise ValueError(
                "--tokenizer_name char builds its vocabulary from the training split, which this "
                "command does not read: pass the checkpoint's own tokenizer directory instead."
            )
        tokenizer = build_char_tokenizer(train_texts, mask_token=model_args.mask_token)
    elif (layout_tokenizer := _layout_tokenizer_loader(name)) is not None:
        tokenizer = layout_tokenizer(name)
    else:
        check_model_source(name, "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path")
        tokenizer = load_saved_tokenizer(name, trust_remote_code=model_args.trust_remote_code)
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": tokenizer.sep_token or FALLBACK_EOS_TOKEN})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_saved_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer saved in a directory (or hub repository): the class tokenizer_config.json names when it is one
    of FILE_FREE_TOKENIZERS, else whatever AutoTokenizer picks."""
    saved_class = FILE_FREE_TOKENIZERS.get(get_tokenizer_config(name_or_path).get("tokenizer_class"))
    if saved_class is not None:
        return saved_class.from_pretrained(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def add_special_tokens(tokenizer, dff_token, mask_token):
    """Make `dff_token` a single special id and give the tokenizer a mask token; return the ids that are new.

    A tokenizer that already has a mask token keeps it. Calling this twice adds nothing the second time.
    """
    size_before = len(tokenizer)
    if dff_token is not None and dff_token not in tokenizer.all_special_tokens:
        tokenizer.add_special_tokens({"extra_special_tokens": [dff_token]}, replace_extra_special_tokens=False)
    if mask_token is not None and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": mask_token})
    return list(range(size_before, len(tokenizer)))


def set_dropout(config, probability: float) -> list[str]:
    """Set every dropout probability of `config` (and of its sub-configs); return the attribute names set."""
    names = []
    for name, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            names += [f"{name}.{sub_name}" for sub_name in set_dropout(value, probability)]
        elif name.endswith(DROPOUT_NAME_ENDINGS) and isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(config, name, probability)
            names.append(name)
    return names


def _build_config(model_args, tokenizer):
    """The model config: the pretrained one, or a from-scratch one sized for `tokenizer` (run_clm's rules)."""
    remote = model_args.trust_remote_code
    from_scratch = model_args.model_name_or_path is None
    if not from_scratch:
        check_model_source(model_args.model_name_or_path, "--model_name_or_path")
    if model_args.config_overrides and not from_scratch:
        raise ValueError(
            "--config_overrides builds a config from scratch; it cannot be used with --model_name_or_path."
        )
    if model_args.config_name:
        config = AutoConfig.from_pretrained(model_args.config_name, trust_remote_code=remote)
    elif not from_scratch:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=remote)
    elif model_args.model_type:
        if model_args.model_type not in CONFIG_MAPPING:
            raise ValueError(f"Unknown --model_type {model_args.model_type!r}; choose one of {list(CONFIG_MAPPING)}.")
        config = CONFIG_MAPPING[model_args.model_type]()
    else:
        raise ValueError("Nothing to build a model from: pass --model_name_or_path, --config_name or --model_type.")
    if model_args.config_overrides:
        head_dim_was_derived = _head_dim_is_derived(config)
        config.update_from_string(model_args.config_overrides)
        overridden = {item.split("=", 1)[0].strip() for item in model_args.config_overrides.split(",")}
        _follow_overridden_sizes(config, overridden, head_dim_was_derived)
        config = _follow_overridden_layers(config, overridden)
    if from_scratch:
        config.vocab_size = len(tokenizer)
        for name in SPECIAL_TOKEN_ID_NAMES:
            if hasattr(config, name):
                setattr(config, name, getattr(tokenizer, name))
    if model_args.dropout is not None:
        set_dropout(config, model_args.dropout)
    return config


def _head_dim_is_derived(config) -> bool:
    """Whether the config's head_dim is hidden_size / num_attention_heads (Llama, Qwen2, ... compute it that way)."""
    head_dim = getattr(config, "head_dim", None)
    heads = getattr(config, "num_attention_heads", None)
    return head_dim is not None and bool(heads) and head_dim * heads == getattr(config, "hidden_size", None)


def _follow_overridden_sizes(config, overridden: set[str], head_dim_was_derived: bool) -> None:
    """Recompute head_dim after --config_overrides changed hidden_size or num_attention_heads but not head_dim.

    A config computes head_dim once, when it is built; without this, `hidden_size=128,num_attention_heads=4` on a
    Llama config keeps the default head_dim of 128 and attention 4x wider than asked. A head_dim that the config
    does not derive (Gemma's) is kept, and the log says so.
    """
    if "head_dim" in overridden or not overridden & {"hidden_size", "num_attention_heads"}:
        return
    if getattr(config, "head_dim", None) is None:
        return
    if not head_dim_was_derived:
        logger.warning(
            "Kept %s's own head_dim %d (not hidden_size / num_attention_heads); set head_dim in "
            "--config_overrides to change it.",
            config.model_type,
            config.head_dim,
        )
        return
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"--config_overrides: hidden_size {config.hidden_size} is not a multiple of "
            f"num_attention_heads {config.num_attention_heads}; change one or set head_dim."
        )
    config.head_dim = config.hidden_size // config.num_attention_heads
    logger.info("head_dim = hidden_size / num_attention_heads = %d.", config.head_dim)


def _follow_overridden_layers(config, overridden: set[str]):
    """The config with `layer_types` derived again after --config_overrides changed the number of layers.

    Qwen2, Gemma and others derive one attention kind per layer when the config is built; a stale list of the
    default length makes save_pretrained refuse the config at the end of training.
    """
    layer_types = getattr(config, "layer_types", None)
    layers = getattr(config, "num_hidden_layers", None)
    if layer_types is None or "layer_types" in overridden or len(layer_types) == layers:
        return config
    return type(config).from_dict({**config.to_dict(), "layer_types": None})


def describe_model(model) -> str:
    """One line for the log: class, parameter count and the sizes that decide it."""
    config = model.config
    sizes = ", ".join(
        f"{name} {getattr(config, name)}"
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
        )
        if getattr(config, name, None) is not None
    )
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return f"{type(model).__name__}: {parameters:,} parameters ({sizes})"


def model_config(model_args, tokenizer) -> PretrainedConfig | None:
    """The config `load_model` builds (no weights are read), or None when it cannot be had without loading a
    model: a directory loaded as a trained checkpoint (adapter-only, a registered layout), or no model named."""
    path = model_args.model_name_or_path
    if path is None and not (model_args.config_name or model_args.model_type):
        return None
    if path is not None and needs_checkpoint_loader(path):
        return None
    return _build_config(model_args, tokenizer)


def load_model(model_args, tokenizer):
    """A model from `model_name_or_path`, or a fresh one from `model_type`/`config_name`, with its auto class.

    Embeddings grow to fit `tokenizer`, and the config's pad/eos ids are the tokenizer's. A directory that
    `save_pretrained` alone cannot read (adapter-only LoRA, a registered layout) is loaded by
    `load_checkpoint_model`, adapters merged, so training can start from it.
    """
    path = model_args.model_name_or_path
    if path is not None and needs_checkpoint_loader(path):
        if model_args.config_name or model_args.dropout is not None or model_args.masked_lm:
            raise ValueError(
                f"{path} is loaded as a trained checkpoint (adapter-only or a registered layout): "
                "--config_name, --dropout and --masked_lm do not apply to it."
            )
        model = load_checkpoint_model(
            path, dtype=model_args.dtype, merge_lora=True, trust_remote_code=model_args.trust_remote_code
        )
        fit_to_tokenizer(model, tokenizer)
        return model
    config = _build_config(model_args, tokenizer)
    if model_args.masked_lm and masked_lm_problem(config.model_type):
        raise DataError(f"{path or model_args.config_name}: {masked_lm_problem(config.model_type)}")
    auto_class = AUTO_CLASSES[auto_class_name(config, model_args.masked_lm)]
    options = {"trust_remote_code": model_args.trust_remote_code, "dtype": torch_dtype(model_args.dtype) or "auto"}
    if model_args.attn_implementation:
        options["attn_implementation"] = model_args.attn_implementation
    if model_args.model_name_or_path is None:
        if options["dtype"] == "auto":  # a fresh model has no stored dtype to follow: keep float32
            del options["dtype"]
        model = auto_class.from_config(config, **options)
    else:
        model = auto_class.from_pretrained(model_args.model_name_or_path, config=config, **options)
    fit_to_tokenizer(model, tokenizer)
    logger.info("Model %s", describe_model(model))
    return model


def fit_to_tokenizer(model, tokenizer) -> None:
    """Grow the embeddings to the tokenizer's size; the config's pad/eos ids become the tokenizer's."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id


# ----------------------------------------------------------------------------------------------------
# Loading trained checkpoints


def _load_plain(path: str, *, dtype="auto", trust_remote_code=False, **_):
    """A `save_pretrained` directory, with the auto class its config calls for."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    auto_class = AUTO_CLASSES[auto_class_name(config)]
    return auto_class.from_pretrained(path, dtype=torch_dtype(dtype) or "auto", trust_remote_code=trust_remote_code)


def _is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def _load_adapter(path: str, *, merge_lora=False, **options):
    """An adapter-only PEFT directory: its base model (from adapter_config.json), grown to the directory's
    tokenizer, with the adapter (and the trained rows of added tokens) on top; merged with `merge_lora`."""
    from peft import PeftModel

    with open(os.path.join(path, ADAPTER_CONFIG), encoding="utf-8") as handle:
        base_path = json.load(handle).get("base_model_name_or_path")
    if not base_path:
        raise ValueError(f"{path}/{ADAPTER_CONFIG} names no base_model_name_or_path: cannot load the adapter.")
    base = load_checkpoint_model(base_path, **options)
    fit_to_tokenizer(base, load_saved_tokenizer(path, trust_remote_code=options.get("trust_remote_code")))
    if os.path.isfile(os.path.join(path, "config.json")):  # the trained model's settings (diffusion_config)
        trained = AutoConfig.from_pretrained(path, trust_remote_code=options.get("trust_remote_code"))
        for name in ("diffusion_config", "is_causal"):
            if hasattr(trained, name):
                setattr(base.config, name, getattr(trained, name))
    model = PeftModel.from_pretrained(base, path)
    return model.merge_and_unload() if merge_lora else model


DEFAULT_LOADERS = (
    CheckpointLoader(_is_adapter, _load_adapter),
    CheckpointLoader(lambda path: os.path.isfile(os.path.join(path, "config.json")), _load_plain),
)


def needs_checkpoint_loader(path: str) -> bool:
    """Whether `path` needs a loader other than from_pretrained (adapter-only, or a registered foreign layout)."""
    return _is_adapter(path) or registered_loader(path) is not None


def _checkpoint_loader(path: str) -> CheckpointLoader:
    """The registered layout of `path`, else the first of DEFAULT_LOADERS whose `matches(path)` is true."""
    if os.path.isdir(path):
        check_config_files(path)
    if (loader := registered_loader(path)) is not None:  # also a hub name, e.g. GSAI-ML/LLaDA-8B-Instruct
        return loader
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"no checkpoint at {path}: expected a directory written by save_pretrained "
            "(run_clm_diff.py / run_diffusion_dpo.py --output_dir, or a checkpoint-N in it)."
        )
    for loader in DEFAULT_LOADERS:
        if loader.matches(path):
            return loader
    raise FileNotFoundError(f"no checkpoint at {path}: the directory has neither config.json nor {ADAPTER_CONFIG}.")


def check_config_files(path: str) -> None:
    """A DataError naming a config.json / adapter_config.json in `path` that is empty or cut (not one JSON object)."""
    for name in ("config.json", ADAPTER_CONFIG):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        try:
            with open(file, encoding="utf-8") as handle:
                content = json.load(handle)
        except (ValueError, UnicodeDecodeError) as error:
            raise DataError(
                f"{file}: not a valid config ({error}); the file is empty or cut (an interrupted save?). "
                "Use another checkpoint, or save this one again."
            ) from None
        if not isinstance(content, dict):
            raise DataError(f"{file}: not a valid config (expected a JSON object, got {type(content).__name__}).")


def _layout_tokenizer_loader(path: str):
    """`load_tokenizer` of the registered layout of `path` (directory or hub name) when it has one, else None."""
    loader = registered_loader(path)
    return None if loader is None else loader.load_tokenizer


def _layout_tokenizer_for_ids(model_path, tokenizer_name):
    """The tokenizer of a registered layout whose ids the tokenizer must match (`tokenizer_for_ids`, e.g. SEDD:
    MASK at the absorbing id, before any token is added), or None for every other model."""
    loader = registered_loader(model_path)
    fit = None if loader is None else loader.tokenizer_for_ids
    return None if fit is None else fit(model_path, tokenizer_name)


def load_checkpoint_model(path: str, **options):
    """The model of a checkpoint directory, from the first loader whose `matches(path)` is true; a DataError when
    a weight holds NaN or inf (a run whose loss diverged: nothing sensible can be sampled or trained from it)."""
    return _finite_model(path, _checkpoint_loader(path).load(path, **options))


def _finite_model(path: str, model):
    """`model` (loaded from `path`), or a DataError naming its first weight that holds NaN or inf."""
    with torch.no_grad():
        broken = next(
            (
                name
                for name, tensor in model.state_dict().items()
                if tensor.is_floating_point() and not torch.isfinite(tensor).all()
            ),
            None,
        )
    if broken is not None:
        raise DataError(
            f"{path}: weight {broken} holds NaN or inf values (the run that wrote it diverged). Use an "
            "earlier checkpoint-N of that run, or train again with a lower --learning_rate."
        )
    return model


def load_checkpoint(
    path: str,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    merge_lora: bool = False,
    trust_remote_code: bool = False,
    tokenizer_name: str | None = None,
):
    """(model in eval mode on `device`, tokenizer) of a trained checkpoint directory (see models.registry).

    `tokenizer_name` serves a registered layout that ships no tokenizer (the SEDD authors' layout).
    """
    loader = _checkpoint_loader(path)
    model = _finite_model(
        path, loader.load(path, dtype=dtype, merge_lora=merge_lora, trust_remote_code=trust_remote_code)
    )
    if loader.tokenizer_for_ids is not None:  # its own message says which tokenizer to pass
        return model.to(resolve_device(device)).eval(), loader.tokenizer_for_ids(path, tokenizer_name)
    try:
        if loader.load_tokenizer is not None:
            tokenizer = loader.load_tokenizer(path)
        else:
            tokenizer = load_saved_tokenizer(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{path}: no tokenizer files next to the model ({error}). Save the tokenizer "
            "into the checkpoint (the training scripts do)."
        ) from error
    return model.to(resolve_device(device)).eval(), tokenizer
