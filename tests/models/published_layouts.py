"""Random checkpoints in the published LLaDA and Dream layouts: config.json as released (tiny sizes, the real
vocabulary sizes and special ids), weight names and shapes, tokenizer files, and remote-code files that fail if run."""

import json

import torch
from safetensors.torch import save_file

LLADA_VOCAB = 126464  # embedding rows; the tokenizer has 126349 ids (0 ... <|eot_id|>), the rest is padding
LLADA_SPECIAL = {
    "<|startoftext|>": 126080,
    "<|endoftext|>": 126081,
    "<|mdm_mask|>": 126336,
    "<|start_header_id|>": 126346,
    "<|end_header_id|>": 126347,
    "<|eot_id|>": 126348,
}
DREAM_VOCAB = 152064
DREAM_TOKENIZER_SIZE = 151667  # Qwen2's 151643 BPE entries + <|endoftext|> ... <|mask|>
DREAM_SPECIAL = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|beginoftext|>": 151665,
    "<|mask|>": 151666,
}
# Flags that run the 8B configs (configs/llada_8b_*.yaml) on these tiny checkpoints: CPU, float32, no evaluation.
ON_CPU = [
    "--dtype",
    "float32",
    "--bf16",
    "false",
    "--use_cpu",
    "true",
    "--do_eval",
    "false",
    "--eval_strategy",
    "no",
    "--save_strategy",
    "no",
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--gradient_accumulation_steps",
    "1",
    "--disable_tqdm",
    "true",
]
REMOTE_CODE = "raise RuntimeError('remote code of the published checkpoint must not run')\n"


def llada_config(**overrides) -> dict:
    """LLaDA-8B's config.json with tiny sizes (d_model 32, 2 layers, 4 query / 2 key-value heads)."""
    config = {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": 32,
        "embedding_dropout": 0.0,
        "embedding_size": LLADA_VOCAB,
        "eos_token_id": 126081,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": 126336,
        "max_sequence_length": 64,
        "mlp_hidden_size": 48,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": 4,
        "n_kv_heads": 2,
        "n_layers": 2,
        "pad_token_id": 126081,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": LLADA_VOCAB,
        "weight_tying": False,
    }
    config.update(overrides)
    return config


def dream_config(**overrides) -> dict:
    """Dream-v0-Instruct-7B's config.json with tiny sizes."""
    config = {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "mask_token_id": 151666,
        "max_position_embeddings": 64,
        "max_window_layers": 2,
        "model_type": "Dream",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": 151643,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": DREAM_VOCAB,
    }
    config.update(overrides)
    return config


def llada_weights(config: dict, seed: int = 0) -> dict:
    """Random tensors under LLaDA's names and shapes (no biases; untied ff_out head)."""
    generator = torch.Generator().manual_seed(seed)
    d, hidden, rows = config["d_model"], config["mlp_hidden_size"], config["embedding_size"]
    kv = config["n_kv_heads"] * d // config["n_heads"]

    def rand(*shape, scale=None):
        return torch.randn(*shape, generator=generator) * (scale or shape[-1] ** -0.5)

    weights = {
        "model.transformer.wte.weight": rand(rows, d, scale=1.0),
        "model.transformer.ln_f.weight": 1 + 0.2 * rand(d, scale=1.0),
        "model.transformer.ff_out.weight": rand(rows, d),
    }
    for layer in range(config["n_layers"]):
        prefix = f"model.transformer.blocks.{layer}."
        weights.update(
            {
                prefix + "attn_norm.weight": 1 + 0.2 * rand(d, scale=1.0),
                prefix + "ff_norm.weight": 1 + 0.2 * rand(d, scale=1.0),
                prefix + "q_proj.weight": rand(d, d),
                prefix + "k_proj.weight": rand(kv, d),
                prefix + "v_proj.weight": rand(kv, d),
                prefix + "attn_out.weight": rand(d, d),
                prefix + "ff_proj.weight": rand(hidden, d),
                prefix + "up_proj.weight": rand(hidden, d),
                prefix + "ff_out.weight": rand(d, hidden),
            }
        )
    return weights


def dream_weights(config: dict, seed: int = 0) -> dict:
    """Random tensors under Dream's (Qwen2) names and shapes: biased q/k/v, untied lm_head."""
    generator = torch.Generator().manual_seed(seed)
    d, hidden, rows = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * d // config["num_attention_heads"]

    def rand(*shape, scale=None):
        return torch.randn(*shape, generator=generator) * (scale or shape[-1] ** -0.5)

    weights = {
        "model.embed_tokens.weight": rand(rows, d, scale=1.0),
        "model.norm.weight": 1 + 0.2 * rand(d, scale=1.0),
        "lm_head.weight": rand(rows, d),
    }
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        weights.update(
            {
                prefix + "input_layernorm.weight": 1 + 0.2 * rand(d, scale=1.0),
                prefix + "post_attention_layernorm.weight": 1 + 0.2 * rand(d, scale=1.0),
                prefix + "self_attn.q_proj.weight": rand(d, d),
                prefix + "self_attn.q_proj.bias": rand(d, scale=0.1),
                prefix + "self_attn.k_proj.weight": rand(kv, d),
                prefix + "self_attn.k_proj.bias": rand(kv, scale=0.1),
                prefix + "self_attn.v_proj.weight": rand(kv, d),
                prefix + "self_attn.v_proj.bias": rand(kv, scale=0.1),
                prefix + "self_attn.o_proj.weight": rand(d, d),
                prefix + "mlp.gate_proj.weight": rand(hidden, d),
                prefix + "mlp.up_proj.weight": rand(hidden, d),
                prefix + "mlp.down_proj.weight": rand(d, hidden),
            }
        )
    return weights


def write_weights(directory, weights: dict, shards: int = 1, dtype=torch.bfloat16) -> None:
    """model.safetensors, or `shards` files model-0000i-of-0000n.safetensors with model.safetensors.index.json."""
    tensors = {name: tensor.to(dtype).contiguous() for name, tensor in weights.items()}
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[shard::shards]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_llada_tokenizer(directory) -> None:
    """A character-level tokenizer.json with LLaDA's special tokens at their real ids (PreTrainedTokenizerFast)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    characters = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {c: i for i, c in enumerate(characters)}
    vocab["<unk>"] = len(vocab)
    special_ids = set(LLADA_SPECIAL.values())
    for token_id in range(len(vocab), max(special_ids) + 1):
        if token_id not in special_ids:
            vocab[f"<|reserved_{token_id}|>"] = token_id
    vocab.update(LLADA_SPECIAL)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(LLADA_SPECIAL))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # as published
    config_path.write_text(json.dumps(config, indent=2))


def write_dream_tokenizer(directory) -> None:
    """vocab.json / merges.txt (byte-level BPE, Qwen2's layout) and a tokenizer_config.json naming DreamTokenizer."""
    from tokenizers.pre_tokenizers import ByteLevel

    byte_symbols = sorted(ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols)}
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), min(DREAM_SPECIAL.values()))})
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    added = {str(i): f"<|extra_{i}|>" for i in range(151643, DREAM_TOKENIZER_SIZE)}
    added.update({str(i): token for token, i in DREAM_SPECIAL.items()})
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            i: {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, token in added.items()
        },
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": "<|beginoftext|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "mask_token": "<|mask|>",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "DreamTokenizer",
        "unk_token": None,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_llada_checkpoint(directory, config=None, shards: int = 1, seed: int = 0) -> dict:
    """A complete LLaDA directory; returns its float32 weights (before the bfloat16 round trip, see `stored`)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = config or llada_config()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("configuration_llada.py", "modeling_llada.py"):
        (directory / name).write_text(REMOTE_CODE)
    weights = llada_weights(config, seed)
    write_weights(directory, weights, shards)
    write_llada_tokenizer(directory)
    return stored(weights)


def write_dream_checkpoint(directory, config=None, shards: int = 1, seed: int = 0) -> dict:
    """A complete Dream directory; returns its weights as stored (bfloat16 values in float32)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = config or dream_config()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py"):
        (directory / name).write_text(REMOTE_CODE)
    weights = dream_weights(config, seed)
    write_weights(directory, weights, shards)
    write_dream_tokenizer(directory)
    return stored(weights)


def stored(weights: dict) -> dict:
    """The float32 values of weights after being stored as bfloat16 (as the released checkpoints are)."""
    return {name: tensor.to(torch.bfloat16).float() for name, tensor in weights.items()}
