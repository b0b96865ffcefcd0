"""Tokenizer and model preparation: special tokens, loading, bidirectional attention, diffusion config, LoRA."""

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

BYTE_TOKENIZER = "byte"
FALLBACK_EOS_TOKEN = "<|endoftext|>"
DIFFUSION_OBJECTIVE = "masked_diffusion"
# Config attribute names that hold a dropout probability: attention_dropout, hidden_dropout_prob, resid_pdrop, ...
DROPOUT_NAME_ENDINGS = ("dropout", "dropout_prob", "dropout_rate", "pdrop")
SPECIAL_TOKEN_ID_NAMES = (
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "cls_token_id", "mask_token_id",
)
MASKED_LM_CLASS_NAMES = frozenset(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())


def load_tokenizer(model_args):
    """The tokenizer of `tokenizer_name` (or the model's), or a file-free byte tokenizer for "byte".

    The result always has an EOS token, and uses EOS for padding when it has no pad token.
    """
    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name is None:
        raise ValueError(
            "No tokenizer to load: pass --tokenizer_name (a hub id, a directory, or 'byte') or --model_name_or_path."
        )
    if name == BYTE_TOKENIZER:
        tokenizer = ByT5Tokenizer()
    elif (published := _published_loader(name)) is not None:
        tokenizer = published.load_tokenizer(name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=model_args.trust_remote_code)
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": tokenizer.sep_token or FALLBACK_EOS_TOKEN})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
        config.update_from_string(model_args.config_overrides)
    if from_scratch:
        config.vocab_size = len(tokenizer)
        for name in SPECIAL_TOKEN_ID_NAMES:
            if hasattr(config, name):
                setattr(config, name, getattr(tokenizer, name))
    if model_args.dropout is not None:
        set_dropout(config, model_args.dropout)
    return config


def load_model(model_args, tokenizer, *, masked_lm: bool = False):
    """A causal LM (or masked LM) from `model_name_or_path`, or a fresh one from `model_type`/`config_name`.

    Embeddings grow to fit `tokenizer`, and the config's pad/eos ids are the tokenizer's.
    """
    auto_class = AutoModelForMaskedLM if masked_lm else AutoModelForCausalLM
    published = None if masked_lm else _published_loader(model_args.model_name_or_path)
    config = _build_config(model_args, tokenizer) if published is None else None
    options = {"trust_remote_code": model_args.trust_remote_code, "dtype": _torch_dtype(model_args.dtype)}
    if model_args.attn_implementation:
        options["attn_implementation"] = model_args.attn_implementation
    if published is not None:
        if model_args.config_name or model_args.dropout is not None:
            raise ValueError(f"{model_args.model_name_or_path} is a {published.name} checkpoint in its released "
                             "layout: --config_name and --dropout need its converted form (diff-convert CKPT OUT).")
        model = published.load(model_args.model_name_or_path, **options)
    elif model_args.model_name_or_path is None:
        if options["dtype"] == "auto":  # a fresh model has no stored dtype to follow: keep float32
            del options["dtype"]
        model = auto_class.from_config(config, **options)
    else:
        model = auto_class.from_pretrained(model_args.model_name_or_path, config=config, **options)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    return model


def _published_loader(name_or_path):
    """The loader of a LLaDA / Dream checkpoint in its released layout (mapped to Llama / Qwen2), else None."""
    from .models.conversion import find_loader

    return find_loader(name_or_path)


def _unwrap(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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
                           eos_token_ids=None):
    """Record in `config` (hence in config.json) that the checkpoint is a masked-diffusion LM.

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
    }
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
        task_type=None if is_encoder_model(model) else "CAUSAL_LM",  # peft's CAUSAL_LM wrapper needs generate()
        **_new_token_options(model, new_token_ids),
    )
    return get_peft_model(model, lora_config)
