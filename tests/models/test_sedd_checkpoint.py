"""A random checkpoint written in exactly the louaaron/sedd-small layout loads and matches an independent forward."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import ByT5Tokenizer

from diff_trainer.models.ddit import DDiTModel
from diff_trainer.models.sedd_checkpoint import SEDD_LOADER, load_sedd_tokenizer
from models.ddit_reference import reference_forward

HIDDEN, COND, BLOCKS, HEADS = 32, 16, 2, 4


def sedd_small_layout(tokens: int, graph: str, seed: int = 0) -> tuple[dict, dict]:
    """(Hydra config, state dict) with sedd-small's keys and shapes (DESIGN.md §3b), sized down, random values."""
    rows = tokens + (1 if graph == "absorb" else 0)
    shapes = {
        "vocab_embed.embedding": [rows, HIDDEN],
        "sigma_map.mlp.0.weight": [COND, 256],
        "sigma_map.mlp.0.bias": [COND],
        "sigma_map.mlp.2.weight": [COND, COND],
        "sigma_map.mlp.2.bias": [COND],
        "output_layer.norm_final.weight": [HIDDEN],
        "output_layer.linear.weight": [rows, HIDDEN],
        "output_layer.linear.bias": [rows],
        "output_layer.adaLN_modulation.weight": [2 * HIDDEN, COND],
        "output_layer.adaLN_modulation.bias": [2 * HIDDEN],
    }
    for i in range(BLOCKS):
        shapes.update(
            {
                f"blocks.{i}.norm1.weight": [HIDDEN],
                f"blocks.{i}.norm2.weight": [HIDDEN],
                f"blocks.{i}.attn_qkv.weight": [3 * HIDDEN, HIDDEN],
                f"blocks.{i}.attn_out.weight": [HIDDEN, HIDDEN],
                f"blocks.{i}.mlp.0.weight": [4 * HIDDEN, HIDDEN],
                f"blocks.{i}.mlp.0.bias": [4 * HIDDEN],
                f"blocks.{i}.mlp.2.weight": [HIDDEN, 4 * HIDDEN],
                f"blocks.{i}.mlp.2.bias": [HIDDEN],
                f"blocks.{i}.adaLN_modulation.weight": [6 * HIDDEN, COND],
                f"blocks.{i}.adaLN_modulation.bias": [6 * HIDDEN],
            }
        )
    generator = torch.Generator().manual_seed(seed)
    state = {
        name: torch.randn(shape, generator=generator) * 0.3 + (1.0 if "norm" in name else 0.0)
        for name, shape in shapes.items()
    }
    head_dim = HIDDEN // HEADS
    state["rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    hydra = {
        "ngpus": 4,
        "tokens": tokens,
        "training": {"batch_size": 512, "n_iters": 1300001, "ema": 0.9999},
        "data": {"train": "openwebtext", "valid": "wikitext103"},
        "graph": {"type": graph, "file": "data", "report_all": False},
        "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
        "sampling": {"predictor": "euler", "steps": 128, "noise_removal": True},
        "model": {
            "name": "small",
            "type": "ddit",
            "hidden_size": HIDDEN,
            "cond_dim": COND,
            "length": 64,
            "n_blocks": BLOCKS,
            "n_heads": HEADS,
            "scale_by_sigma": graph == "absorb",
            "dropout": 0.1,
        },
    }
    return hydra, state


def write_checkpoint(path, hydra, state, weights="model.safetensors"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hydra))
    if weights.endswith(".safetensors"):
        save_file(state, str(path / weights))
    else:
        torch.save(state, path / weights)
    return path


@pytest.mark.parametrize("graph,weights", [("absorb", "model.safetensors"), ("uniform", "pytorch_model.bin")])
def test_layout_loads_and_matches_reference(tmp_path, graph, weights):
    tokens = len(ByT5Tokenizer())
    hydra, state = sedd_small_layout(tokens, graph)
    path = write_checkpoint(tmp_path / "sedd", hydra, state, weights)
    assert SEDD_LOADER.matches(path)
    model = SEDD_LOADER.load(path)
    assert isinstance(model, DDiTModel) and not model.training
    config = model.config.diffusion_config
    assert config["objective"] == f"sedd_{graph}" and config["noise"] == "loglinear"
    assert config["mask_token_id"] == (tokens if graph == "absorb" else None)
    ids = torch.randint(0, tokens, (2, 9), generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.2, 1.7])
    expected = reference_forward(state, ids, sigma, HEADS, scale_by_sigma=graph == "absorb")
    assert torch.allclose(model(ids, sigma=sigma).logits.double(), expected, atol=1e-4, rtol=1e-4)
    tokenizer = load_sedd_tokenizer(path, "byte")
    assert len(tokenizer) == model.config.vocab_size
    if graph == "absorb":
        assert tokenizer.mask_token_id == tokens


def test_bad_checkpoints(tmp_path):
    tokens = len(ByT5Tokenizer())
    hydra, state = sedd_small_layout(tokens, "absorb")
    assert not SEDD_LOADER.matches(tmp_path)  # no config.json
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama", **hydra}))
    assert not SEDD_LOADER.matches(tmp_path / "hf")
    del state["blocks.1.norm2.weight"]
    broken = write_checkpoint(tmp_path / "broken", hydra, state)
    with pytest.raises(ValueError, match="missing: \\['blocks.1.norm2.weight'\\]"):
        SEDD_LOADER.load(broken)
    with pytest.raises(ValueError, match="pass --tokenizer_name gpt2"):
        load_sedd_tokenizer(broken)
    hydra["tokens"] = tokens + 5
    (broken / "config.json").write_text(json.dumps(hydra))
    with pytest.raises(ValueError, match="trained with tokens="):
        load_sedd_tokenizer(broken, "byte")
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(hydra))
    with pytest.raises(FileNotFoundError, match="no weights found"):
        SEDD_LOADER.load(empty)


def gpt2_like_tokenizer(directory):
    """A byte-level BPE with `<|endoftext|>` as its only special token (GPT-2's kind), trained here in a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["def open(file, mode): Open a file and return a stream."] * 20, trainer)
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def test_fine_tuning_from_the_layout_keeps_mask_id_and_adds_dff(tmp_path):
    """run_clm_diff.py from a sedd-small-layout directory: MASK stays the absorbing id `tokens`, <DFF> gets the next
    row (the mean rows), and at learning rate 0 every original weight comes back unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diff_trainer.cli import generate
    from objectives.test_sedd import ROOT, run_clm_diff

    tokens = len(gpt2_like_tokenizer(tmp_path / "gpt2_like"))
    hydra, state = sedd_small_layout(tokens, "absorb")
    write_checkpoint(tmp_path / "sedd", hydra, state)
    out = tmp_path / "fine_tuned"
    run_clm_diff.main(
        [
            "--model_name_or_path",
            str(tmp_path / "sedd"),
            "--tokenizer_name",
            str(tmp_path / "gpt2_like"),
            "--train_diff_model",
            "--diffusion_objective",
            "sedd_absorb",
            "--do_train",
            "--output_dir",
            str(out),
            "--train_file",
            str(ROOT / "data/stdlib_docstrings/train.jsonl.zst"),
            "--max_train_samples",
            "16",
            "--block_size",
            "32",
            "--per_device_train_batch_size",
            "2",
            "--max_steps",
            "2",
            "--learning_rate",
            "0",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--use_cpu",
            "true",
            "--disable_tqdm",
            "true",
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.mask_token_id, tokenizer.convert_tokens_to_ids("<DFF>"), len(tokenizer)) == (
        tokens,
        tokens + 1,
        tokens + 2,
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, DDiTModel) and model.config.vocab_size == tokens + 2 and model.config.scale_by_sigma
    diffusion_config = model.config.diffusion_config
    assert (diffusion_config["objective"], diffusion_config["mask_token_id"]) == ("sedd_absorb", tokens)
    trained = model.state_dict()
    for name, value in state.items():
        if name in ("vocab_embed.embedding", "output_layer.linear.weight", "output_layer.linear.bias"):
            assert torch.equal(trained[name][: tokens + 1], value)
            assert torch.allclose(trained[name][tokens + 1], value.mean(0), atol=1e-6)  # <DFF>
        else:
            assert torch.equal(trained[name], value), name
    generate.main(["--model", str(out), "--prompt", "def open", "--gen_length", "4", "--steps", "2", "--seed", "0"])


def test_fine_tuning_refuses_a_tokenizer_or_graph_the_checkpoint_did_not_learn(tmp_path):
    from diff_trainer.models.loading import add_special_tokens, load_tokenizer
    from diff_trainer.training.args.model import ModelArguments
    from diff_trainer.training.model import prepare_model
    from objectives.test_sedd import SETTINGS

    tokens = len(ByT5Tokenizer())
    hydra, state = sedd_small_layout(tokens, "absorb")
    path = str(write_checkpoint(tmp_path / "sedd", hydra, state))
    model_args = ModelArguments(model_name_or_path=path, tokenizer_name="byte")
    tokenizer = load_tokenizer(model_args)
    assert tokenizer.mask_token_id == tokens  # MASK first, so that <DFF> comes after it
    assert add_special_tokens(tokenizer, "<DFF>", "<|mdm_mask|>") == [tokens + 1]
    settings = {**SETTINGS, "sedd_scale_by_sigma": False}
    del settings["auto_class"], settings["masked_lm"]
    with pytest.raises(
        ValueError, match="trained with the absorb graph: continue it with --diffusion_objective sedd_absorb"
    ):
        prepare_model(model_args, tokenizer, "diffusion", diffusion_settings={**settings, "objective": "sedd_uniform"})
    tokenizer.add_special_tokens({"mask_token": "<other>"})
    with pytest.raises(
        ValueError, match=f"mask \\(absorbing\\) id is {tokens}, but the tokenizer's mask token has id {tokens + 2}"
    ):
        prepare_model(model_args, tokenizer, "diffusion", diffusion_settings={**settings, "objective": "sedd_absorb"})


def test_dpo_refuses_a_sedd_layout_checkpoint(tmp_path):
    import importlib.util

    from objectives.test_sedd import ROOT

    spec = importlib.util.spec_from_file_location("run_diffusion_dpo", ROOT / "run_diffusion_dpo.py")
    run_diffusion_dpo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_diffusion_dpo)
    hydra, state = sedd_small_layout(len(ByT5Tokenizer()), "absorb")
    path = write_checkpoint(tmp_path / "sedd", hydra, state)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    with pytest.raises(
        ValueError,
        match="is a SEDD \\(score-entropy\\) checkpoint; VRPO / DPO is defined here for masked- and block-diffusion",
    ):
        run_diffusion_dpo.main(
            [
                "--model_name_or_path",
                str(path),
                "--tokenizer_name",
                "byte",
                "--train_file",
                str(pairs),
                "--output_dir",
                str(tmp_path / "dpo"),
                "--do_train",
                "--use_cpu",
                "true",
                "--report_to",
                "none",
            ]
        )


def test_lora_fine_tuning_from_the_layout_samples(tmp_path):
    """--use_lora on the DDiT of a layout directory: adapters plus the new rows, reloaded by diff-generate."""
    from diff_trainer.cli import generate
    from objectives.test_sedd import ROOT, run_clm_diff

    hydra, state = sedd_small_layout(len(ByT5Tokenizer()), "absorb")
    write_checkpoint(tmp_path / "sedd", hydra, state)
    out = tmp_path / "lora"
    run_clm_diff.main(
        [
            "--model_name_or_path",
            str(tmp_path / "sedd"),
            "--tokenizer_name",
            "byte",
            "--use_lora",
            "--lora_target_modules",
            "attn_qkv",
            "attn_out",
            "--train_diff_model",
            "--diffusion_objective",
            "sedd_absorb",
            "--do_train",
            "--output_dir",
            str(out),
            "--max_train_samples",
            "8",
            "--train_file",
            str(ROOT / "data/stdlib_docstrings/train.jsonl.zst"),
            "--block_size",
            "32",
            "--per_device_train_batch_size",
            "2",
            "--max_steps",
            "1",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--use_cpu",
            "true",
            "--disable_tqdm",
            "true",
        ]
    )
    assert (out / "adapter_model.safetensors").is_file()
    model, tokenizer, config = generate.open_checkpoint(str(out), merge_lora=True)
    assert isinstance(model, DDiTModel) and model.config.vocab_size == len(tokenizer) == len(ByT5Tokenizer()) + 2
    assert config["objective"] == "sedd_absorb" and config["mask_token_id"] == len(ByT5Tokenizer())
    generate.main(["--model", str(out), "--merge_lora", "--prompt", "def", "--gen_length", "4", "--steps", "2"])
