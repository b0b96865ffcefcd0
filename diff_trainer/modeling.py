"""Models in one place: tokenizer, `prepare_model` for training, `load_checkpoint` for every reader of checkpoints.

`prepare_model(model_args, tokenizer, mode)` builds or loads the model with the right auto class, fits it to the
tokenizer, makes it bidirectional and self-describing (`diffusion_config`) for diffusion, and adds LoRA.
`load_checkpoint(path)` loads a trained checkpoint (plain directory or adapter-only PEFT directory, causal LM or
encoder) for the CLIs and the DPO reference; `CHECKPOINT_LOADERS` lets other layouts plug in first.
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

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
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.models.auto.tokenization_auto import get_tokenizer_config

from .data.char_tokenizer import CHAR_TOKENIZER, CharTokenizer, build_char_tokenizer
from .data.loading import DataError
from .devices import resolve_device
from .models.conversion import LOADERS as RELEASED_LAYOUT_LOADERS

BYTE_TOKENIZER = "byte"
FALLBACK_EOS_TOKEN = "<|endoftext|>"
DIFFUSION_OBJECTIVE = "masked_diffusion"
# Config attribute names that hold a dropout probability: attention_dropout, hidden_dropout_prob, resid_pdrop, ...
DROPOUT_NAME_ENDINGS = ("dropout", "dropout_prob", "dropout_rate", "pdrop")
SPECIAL_TOKEN_ID_NAMES = (
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "cls_token_id", "mask_token_id",
)
MASKED_LM_CLASS_NAMES = frozenset(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())
# auto classes a checkpoint's diffusion_config may name in "auto_class" (others can be registered here)
AUTO_CLASSES = {"AutoModelForCausalLM": AutoModelForCausalLM, "AutoModelForMaskedLM": AutoModelForMaskedLM}
MODES = ("causal", "diffusion")
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
        raise FileNotFoundError(f"{flag}: no checkpoint at {name_or_path} (no such directory). Train or download it "
                                "first, or correct the path.")


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
            raise ValueError("--tokenizer_name char builds its vocabulary from the training split, which this "
                             "command does not read: pass the checkpoint's own tokenizer directory instead.")
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


def _torch_dtype(name: str):
    """torch's dtype for a --dtype name ("auto" passes through for from_pretrained)."""
    if name == "auto":
        return "auto"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"Unknown dtype {name!r}: use float32, bfloat16, float16 or auto.")
    return dtype


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
        logger.warning("Kept %s's own head_dim %d (not hidden_size / num_attention_heads); set head_dim in "
                       "--config_overrides to change it.", config.model_type, config.head_dim)
        return
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"--config_overrides: hidden_size {config.hidden_size} is not a multiple of "
                         f"num_attention_heads {config.num_attention_heads}; change one or set head_dim.")
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
    sizes = ", ".join(f"{name} {getattr(config, name)}" for name in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim", "intermediate_size", "vocab_size")
        if getattr(config, name, None) is not None)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return f"{type(model).__name__}: {parameters:,} parameters ({sizes})"


def auto_class_name(config, masked_lm: bool = False) -> str:
    """The auto class of a model: --masked_lm, else the one its diffusion_config records, else a masked LM for
    encoder architectures (BERT, ModernBERT, ...), else a causal LM."""
    if masked_lm:
        return "AutoModelForMaskedLM"
    recorded = (read_diffusion_config(config) or {}).get("auto_class")
    if recorded is not None:
        if recorded not in AUTO_CLASSES:
            raise ValueError(f"The checkpoint's diffusion_config names auto class {recorded!r}, which is not "
                             f"registered in diff_trainer.modeling.AUTO_CLASSES ({', '.join(AUTO_CLASSES)}).")
        return recorded
    if any(name in MASKED_LM_CLASS_NAMES for name in getattr(config, "architectures", None) or []):
        return "AutoModelForMaskedLM"
    return "AutoModelForCausalLM"


def load_model(model_args, tokenizer):
    """A model from `model_name_or_path`, or a fresh one from `model_type`/`config_name`, with its auto class.

    Embeddings grow to fit `tokenizer`, and the config's pad/eos ids are the tokenizer's. A directory that
    `save_pretrained` alone cannot read (adapter-only LoRA, a layout of CHECKPOINT_LOADERS) is loaded by
    `load_checkpoint_model`, adapters merged, so training can start from it.
    """
    path = model_args.model_name_or_path
    if path is not None and needs_checkpoint_loader(path):
        if model_args.config_name or model_args.dropout is not None or model_args.masked_lm:
            raise ValueError(f"{path} is loaded as a trained checkpoint (adapter-only or a registered layout): "
                             "--config_name, --dropout and --masked_lm do not apply to it.")
        model = load_checkpoint_model(path, dtype=model_args.dtype, merge_lora=True,
                                      trust_remote_code=model_args.trust_remote_code)
        fit_to_tokenizer(model, tokenizer)
        return model
    config = _build_config(model_args, tokenizer)
    auto_class = AUTO_CLASSES[auto_class_name(config, model_args.masked_lm)]
    options = {"trust_remote_code": model_args.trust_remote_code, "dtype": _torch_dtype(model_args.dtype)}
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


def prepare_model(model_args, tokenizer, mode: str, *, new_token_ids=(), diffusion_settings=None):
    """The model to train: loaded or built with its auto class and fitted to `tokenizer`; for mode "diffusion"
    made bidirectional and self-describing; wrapped with LoRA under --use_lora.

    diffusion_settings (shift_logits, noise_schedule, time_eps, dff_token, ...) are written into the config's
    `diffusion_config`; without them the checkpoint must already be a diffusion model (e.g. for DPO).
    `new_token_ids` are the tokens added in this run, trained (and saved) with the adapter under LoRA.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "causal" and model_args.masked_lm:
        raise ValueError("--masked_lm loads an encoder as the denoiser: it only applies with --train_diff_model.")
    model = load_model(model_args, tokenizer)
    objective = (diffusion_settings or {}).get("objective", "masked")
    if mode == "diffusion" and objective != "masked":  # score entropy (SEDD)
        from .sedd_objective import prepare_sedd_model

        model = prepare_sedd_model(model, tokenizer, **diffusion_settings, masked_lm=model_args.masked_lm,
                                   auto_class=auto_class_name(model.config, model_args.masked_lm))
    elif mode == "diffusion":
        if diffusion_settings is None and (read_diffusion_config(model.config) or {}).get("objective", "") \
                .startswith("sedd_"):
            raise ValueError(f"{model_args.model_name_or_path} is a SEDD (score-entropy) checkpoint; VRPO / DPO "
                             "is defined here for masked-diffusion ELBOs only.")
        make_bidirectional(model)
        if diffusion_settings is not None:
            if diffusion_settings.get("shift_logits") and is_encoder_model(model):
                raise ValueError("--shift_logits adapts a causal LM; an encoder (masked LM) predicts its own position.")
            write_diffusion_config(model.config, mask_token_id=tokenizer.mask_token_id,
                                   auto_class=auto_class_name(model.config, model_args.masked_lm),
                                   **diffusion_settings)
        elif read_diffusion_config(model.config) is None:
            raise ValueError(f"{model_args.model_name_or_path} is not a masked-diffusion checkpoint (no "
                             "diffusion_config in its config); train one with run_clm_diff.py --train_diff_model.")
    if model_args.use_lora:
        model = apply_lora(model, model_args, new_token_ids)
    return model


# ----------------------------------------------------------------------------------------------------
# Loading trained checkpoints


@dataclass(frozen=True)
class CheckpointLoader:
    """One checkpoint layout: `matches(path)` says whether `load(path, **options)` can load the directory."""

    matches: Callable[[str], bool]
    load: Callable[..., Any]


def _load_plain(path: str, *, dtype="auto", trust_remote_code=False, **_):
    """A `save_pretrained` directory, with the auto class its config calls for."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    auto_class = AUTO_CLASSES[auto_class_name(config)]
    return auto_class.from_pretrained(path, dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code)


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


DEFAULT_LOADERS = (CheckpointLoader(_is_adapter, _load_adapter),
                   CheckpointLoader(lambda path: os.path.isfile(os.path.join(path, "config.json")), _load_plain))
# foreign layouts (LLaDA, SEDD, ...): append a CheckpointLoader; these are consulted before DEFAULT_LOADERS.
# A loader may also have `load_tokenizer(path)`, for tokenizer files AutoTokenizer cannot read without remote code
# (the released LLaDA and Dream layouts, mapped onto Llama / Qwen2 by diff_trainer.models, have one).
CHECKPOINT_LOADERS: list[CheckpointLoader] = [*RELEASED_LAYOUT_LOADERS]


def needs_checkpoint_loader(path: str) -> bool:
    """Whether `path` needs a loader other than from_pretrained (adapter-only, or a registered foreign layout)."""
    return _is_adapter(path) or _registered_loader(path) is not None


def _registered_loader(path: str):
    """The CHECKPOINT_LOADERS entry of `path` (a directory, or a hub name for layouts that read the hub), or None."""
    return next((loader for loader in CHECKPOINT_LOADERS if loader.matches(path)), None)


def _checkpoint_loader(path: str):
    """The first loader whose `matches(path)` is true."""
    if not os.path.isdir(path):
        if (loader := _registered_loader(path)) is not None:  # e.g. GSAI-ML/LLaDA-8B-Instruct on the hub
            return loader
        raise FileNotFoundError(f"no checkpoint at {path}: expected a directory written by save_pretrained "
                                "(run_clm_diff.py / run_diffusion_dpo.py --output_dir, or a checkpoint-N in it).")
    check_config_files(path)
    for loader in (*CHECKPOINT_LOADERS, *DEFAULT_LOADERS):
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
            raise DataError(f"{file}: not a valid config ({error}); the file is empty or cut (an interrupted save?). "
                            "Use another checkpoint, or save this one again.") from None
        if not isinstance(content, dict):
            raise DataError(f"{file}: not a valid config (expected a JSON object, got {type(content).__name__}).")


def _layout_tokenizer_loader(path: str):
    """`load_tokenizer` of the registered layout of `path` (directory or hub name) when it has one, else None."""
    return getattr(_registered_loader(path), "load_tokenizer", None)


def _layout_tokenizer_for_ids(model_path, tokenizer_name):
    """The tokenizer of a registered layout whose ids the tokenizer must match (`tokenizer_for_ids`, e.g. SEDD:
    MASK at the absorbing id, before any token is added), or None for every other model."""
    fit = getattr(_registered_loader(model_path), "tokenizer_for_ids", None) if model_path is not None else None
    return None if fit is None else fit(model_path, tokenizer_name)


def load_checkpoint_model(path: str, **options):
    """The model of a checkpoint directory, from the first loader whose `matches(path)` is true; a DataError when
    a weight holds NaN or inf (a run whose loss diverged: nothing sensible can be sampled or trained from it)."""
    model = _checkpoint_loader(path).load(path, **options)
    with torch.no_grad():
        broken = next((name for name, tensor in model.state_dict().items()
                       if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)
    if broken is not None:
        raise DataError(f"{path}: weight {broken} holds NaN or inf values (the run that wrote it diverged). Use an "
                        "earlier checkpoint-N of that run, or train again with a lower --learning_rate.")
    return model


def load_checkpoint(path: str, *, device: str = "cpu", dtype: str = "auto", merge_lora: bool = False,
                    trust_remote_code: bool = False):
    """(model in eval mode on `device`, tokenizer) of a trained checkpoint directory (see CHECKPOINT_LOADERS)."""
    loader = _checkpoint_loader(path)
    model = load_checkpoint_model(path, dtype=dtype, merge_lora=merge_lora, trust_remote_code=trust_remote_code)
    try:
        if hasattr(loader, "load_tokenizer"):
            tokenizer = loader.load_tokenizer(path)
        else:
            tokenizer = load_saved_tokenizer(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{path}: no tokenizer files next to the model ({error}). Save the tokenizer "
                                "into the checkpoint (the training scripts do).") from error
    return model.to(resolve_device(device)).eval(), tokenizer


def is_peft_model(model) -> bool:
    """True for a peft wrapper (LoRA adapters that can be disabled)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def _unwrap(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if is_peft_model(model) else model


def is_encoder_model(model) -> bool:
    """True for a masked-LM encoder (BERT, ModernBERT, ...), which attends both ways by construction."""
    base = _unwrap(model)
    return type(base).__name__ in MASKED_LM_CLASS_NAMES and not getattr(base.config, "is_decoder", False)


@torch.no_grad()
def attends_to_future(model) -> bool:
    """Whether position 0's logits depend on the last token (probed with two 3-token inputs in eval mode)."""
    base = _unwrap(model)
    pad_id = base.config.pad_token_id
    ids = [i for i in range(5) if i != pad_id][:4]
    first, second, last_a, last_b = ids
    input_ids = torch.tensor([[first, second, last_a], [first, second, last_b]], device=base.device)
    was_training = base.training
    base.eval()
    try:
        logits = base(input_ids=input_ids).logits
    finally:
        base.train(was_training)
    return not torch.equal(logits[0, 0], logits[1, 0])


def make_bidirectional(model):
    """Switch a causal LM to full (bidirectional) attention via `config.is_causal = False`, and check it worked.

    Encoders are accepted as they are. Raises ValueError for a model whose attention ignores the flag.
    """
    if is_encoder_model(model):
        return model
    config = _unwrap(model).config
    config.is_causal = False
    if not attends_to_future(model):
        config.is_causal = True
        raise ValueError(
            f"Model type {config.model_type!r} ignores config.is_causal=False: its attention stays causal, so it "
            "cannot be trained as a masked-diffusion model. Use a model family that honours the flag "
            "(e.g. llama, qwen2, gpt2) or an encoder with --masked_lm."
        )
    return model


def write_diffusion_config(config, *, mask_token_id, shift_logits, noise_schedule, time_eps, dff_token,
                           auto_class=None, row_packing=None, eos_token_ids=None):
    """Record in `config` (hence in config.json) that the checkpoint is a masked-diffusion LM, and how to load it.

    `eos_token_ids`: every id that ends a generation (LLaDA: EOS and EOT); None keeps the ones already recorded.
    """
    previous = read_diffusion_config(config) or {}
    if previous.get("shift_logits") and not shift_logits:
        raise ValueError("This checkpoint is a diffusion model with shifted logits (logits at i predict token i+1, "
                         "e.g. Dream): train it with --shift_logits.")
    if eos_token_ids is None:
        eos_token_ids = previous.get("eos_token_ids")
    vocab_size = config.get_text_config().vocab_size
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(
            f"mask_token_id {mask_token_id} is outside the model's vocabulary of {vocab_size} rows: resize the "
            "embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer))) after adding the mask token."
        )
    config.diffusion_config = {
        "objective": DIFFUSION_OBJECTIVE,
        "mask_token_id": int(mask_token_id),
        "shift_logits": bool(shift_logits),
        "noise_schedule": noise_schedule,
        "time_eps": float(time_eps),
        "dff_token": dff_token,
        "auto_class": auto_class or auto_class_name(config),
    }
    if row_packing is not None:  # packed, left or right (trained EOS padding): DPO's default padding follows it
        config.diffusion_config["row_packing"] = row_packing
    if eos_token_ids is not None:
        config.diffusion_config["eos_token_ids"] = [int(i) for i in eos_token_ids]
    config.is_causal = False
    return config


def read_diffusion_config(config):
    """The checkpoint's diffusion settings (a dict), or None for a plain causal LM."""
    diffusion_config = getattr(config, "diffusion_config", None)
    return dict(diffusion_config) if diffusion_config is not None else None


def _module_name(model, module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _new_token_options(model, new_token_ids) -> dict:
    """LoraConfig options that train the rows of newly added tokens and save them with the adapter.

    peft's `trainable_token_indices` trains only those rows (of the input embedding, and of an untied output
    layer); it drops an output layer's bias, so a biased output layer (BERT-style) is trained whole instead.
    """
    if not new_token_ids:
        return {}
    token_ids = sorted(new_token_ids)
    input_layer, output_layer = model.get_input_embeddings(), model.get_output_embeddings()
    layer_names = [_module_name(model, input_layer)]
    if output_layer is not None:
        if getattr(output_layer, "bias", None) is not None:
            return {"modules_to_save": layer_names + [_module_name(model, output_layer)]}
        if output_layer.weight is not input_layer.weight:  # a tied output layer follows the embedding's rows
            layer_names.append(_module_name(model, output_layer))
    return {"trainable_token_indices": {name: token_ids for name in layer_names}}


def apply_lora(model, model_args, new_token_ids):
    """Wrap `model` with LoRA adapters; the rows of newly added tokens are trained and saved with the adapter."""
    from peft import LoraConfig, get_peft_model

    targets = list(model_args.lora_target_modules)
    lora_config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        # peft's CAUSAL_LM wrapper needs generate(): not for encoders, DDiT or TimeConditionedLM
        task_type="CAUSAL_LM" if hasattr(model, "prepare_inputs_for_generation") and not is_encoder_model(model)
        else None,
        **_new_token_options(model, new_token_ids),
    )
    return get_peft_model(model, lora_config)
