"""Loaders and conversion: recognising the layouts, weight files (single, sharded, .bin), stop ids, tokenizers,
bad checkpoints, and the round trip convert -> save -> reload."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from diff_trainer.models import conversion
from diff_trainer.models.conversion import DREAM_LOADER, LLADA_LOADER, convert_checkpoint, find_loader
from models.published_layouts import (
    DREAM_SPECIAL,
    LLADA_SPECIAL,
    llada_config,
    write_llada_checkpoint,
    write_weights,
)

IDS = torch.tensor([[126080, 33, 126336, 126336, 70, 126081], [12, 126346, 5, 126347, 126336, 126348]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_each_layout_is_recognised_and_nothing_else(llada_checkpoint, dream_checkpoint, tmp_path):
    assert find_loader(llada_checkpoint[0]) is LLADA_LOADER
    assert find_loader(dream_checkpoint[0]) is DREAM_LOADER
    AutoModelForCausalLM.from_config(conversion.LLADA_LOADER.config(llada_checkpoint[0])).save_pretrained(tmp_path)
    assert find_loader(tmp_path) is None  # a converted (native) checkpoint loads the ordinary way
    assert find_loader(tmp_path / "missing") is None and find_loader(None) is None


def test_stop_ids_are_the_eos_and_the_end_of_turn_token(llada_checkpoint, dream_checkpoint):
    assert LLADA_LOADER.config(llada_checkpoint[0]).diffusion_config["eos_token_ids"] == [126081, 126348]
    assert DREAM_LOADER.config(dream_checkpoint[0]).diffusion_config["eos_token_ids"] == [151643, 151645]


def test_tokenizers_load_without_remote_code_with_the_mask_token_set(llada_checkpoint, dream_checkpoint):
    llada_tokenizer = LLADA_LOADER.load_tokenizer(llada_checkpoint[0])
    assert (llada_tokenizer.mask_token, llada_tokenizer.mask_token_id) == ("<|mdm_mask|>", 126336)
    assert llada_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|eot_id|>"]) == [126081, 126348]
    assert llada_tokenizer.decode(llada_tokenizer.encode("a+b", add_special_tokens=False)) == "a+b"
    dream_tokenizer = DREAM_LOADER.load_tokenizer(dream_checkpoint[0])
    assert dream_tokenizer.mask_token_id == DREAM_SPECIAL["<|mask|>"] and dream_tokenizer.eos_token_id == 151643
    assert dream_tokenizer.decode(dream_tokenizer.encode("hi there", add_special_tokens=False)) == "hi there"


def test_single_file_sharded_and_pytorch_bin_give_the_same_model(llada_checkpoint, tmp_path):
    sharded = LLADA_LOADER.load(llada_checkpoint[0])
    single = tmp_path / "single"
    shutil.copytree(llada_checkpoint[0], single)
    for path in single.glob("model*.safetensors*"):
        path.unlink()
    from models.published_layouts import llada_weights

    write_weights(single, llada_weights(llada_config()), shards=1)
    torch.testing.assert_close(logits(LLADA_LOADER.load(single)), logits(sharded), atol=0, rtol=0)
    as_bin = tmp_path / "bin"
    shutil.copytree(single, as_bin)
    state = {name: tensor.to(torch.bfloat16) for name, tensor in llada_weights(llada_config()).items()}
    (as_bin / "model.safetensors").unlink()
    torch.save(state, as_bin / "pytorch_model.bin")
    torch.testing.assert_close(logits(LLADA_LOADER.load(as_bin)), logits(sharded), atol=0, rtol=0)


def test_convert_save_reload_round_trip(llada_checkpoint, tmp_path):
    source = llada_checkpoint[0]
    loaded = LLADA_LOADER.load(source)
    output = convert_checkpoint(source, tmp_path / "converted", dtype="float32").output_dir
    assert not list(output.glob("*.py"))  # no remote code travels with it
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "llama" and config["is_causal"] is False and "auto_map" not in config
    assert config["diffusion_config"] == {
        "objective": "masked_diffusion",
        "mask_token_id": 126336,
        "shift_logits": False,
        "noise_schedule": "linear",
        "time_eps": 0.001,
        "dff_token": None,
        "auto_class": "AutoModelForCausalLM",
        "eos_token_ids": [126081, 126348],
    }
    reloaded = AutoModelForCausalLM.from_pretrained(output)
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(logits(reloaded), logits(loaded), atol=0, rtol=0)
    tokenizer, released = AutoTokenizer.from_pretrained(output), LLADA_LOADER.load_tokenizer(source)
    assert tokenizer.mask_token_id == 126336 and len(tokenizer) == len(released) == 126349
    assert tokenizer.encode("x=1", add_special_tokens=False) == released.encode("x=1", add_special_tokens=False)
    reloaded.save_pretrained(tmp_path / "again")
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(tmp_path / "again")), logits(loaded), atol=0, rtol=0
    )


def test_dream_conversion_keeps_bfloat16_and_the_qwen2_tokenizer(dream_checkpoint, tmp_path):
    output = convert_checkpoint(dream_checkpoint[0], tmp_path / "dream", max_shard_size="10MB").output_dir
    assert len(list(output.glob("model-*.safetensors"))) > 1 and (output / "model.safetensors.index.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(output, dtype="auto")
    assert type(reloaded).__name__ == "Qwen2ForCausalLM" and reloaded.dtype == torch.bfloat16
    assert reloaded.config.diffusion_config["shift_logits"] is True
    ids = torch.tensor([[1, 151666, 151666, 4]])
    torch.testing.assert_close(
        logits(reloaded, ids), logits(DREAM_LOADER.load(dream_checkpoint[0], dtype="auto"), ids), atol=0, rtol=0
    )
    tokenizer_config = json.loads((output / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] != "DreamTokenizer" and "auto_map" not in tokenizer_config
    assert AutoTokenizer.from_pretrained(output).mask_token_id == 151666


def test_conversion_refuses_to_overwrite_and_leaves_nothing_when_it_fails(llada_checkpoint, tmp_path, monkeypatch):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_checkpoint(llada_checkpoint[0], occupied)
    assert (occupied / "notes.txt").read_text() == "keep me"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(LLADA_LOADER.load_tokenizer(llada_checkpoint[0])), "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(llada_checkpoint[0], tmp_path / "out")
    assert list(tmp_path.iterdir()) == [occupied]


def test_not_a_llada_or_dream_checkpoint_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        convert_checkpoint(tmp_path, tmp_path / "out")


@pytest.fixture
def broken(tmp_path):
    """A copy of a fresh single-file LLaDA checkpoint to damage."""
    directory = tmp_path / "broken"
    write_llada_checkpoint(directory)
    return directory


def rewrite_weights(directory, change):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(directory / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))


def test_a_tensor_of_the_wrong_shape_is_named_with_its_file(broken):
    rewrite_weights(broken, lambda t: t.update({"model.transformer.blocks.1.k_proj.weight": torch.zeros(32, 32)}))
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: tensor 'model\.transformer\.blocks\.1\.k_proj\.weight' "
        r"has shape \(32, 32\).*\(16, 32\)",
    ):
        LLADA_LOADER.load(broken)


def test_missing_and_unknown_tensors_are_named(broken):
    rewrite_weights(broken, lambda t: t.pop("model.transformer.blocks.0.up_proj.weight"))
    with pytest.raises(ValueError, match=r"lacks 1 tensors.*model\.layers\.0\.mlp\.up_proj\.weight"):
        LLADA_LOADER.load(broken)
    rewrite_weights(
        broken,
        lambda t: t.update(
            {
                "model.transformer.blocks.0.up_proj.weight": torch.zeros(48, 32),
                "model.transformer.blocks.0.att_proj.weight": torch.zeros(96, 32),
            }
        ),
    )
    with pytest.raises(ValueError, match="att_proj"):
        LLADA_LOADER.load(broken)


def test_missing_shards_and_missing_weights_are_reported(llada_checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(llada_checkpoint[0], copy)
    (copy / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        LLADA_LOADER.load(copy)
    for path in copy.glob("model*"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="has no weights"):
        LLADA_LOADER.load(copy)


def test_a_tokenizer_whose_mask_disagrees_with_the_config_is_refused(tmp_path):
    directory = tmp_path / "llada"
    write_llada_checkpoint(directory, config=llada_config(mask_token_id=126080))
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["mask_token"] = "<|mdm_mask|>"
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ValueError, match="mask_token_id is 126080"):
        LLADA_LOADER.load_tokenizer(directory)


def test_tied_embeddings_share_one_matrix(tmp_path):
    directory = tmp_path / "tied"
    weights = write_llada_checkpoint(directory, config=llada_config(weight_tying=True))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(directory / "model.safetensors"))
    del tensors["model.transformer.ff_out.weight"]
    save_file(tensors, str(directory / "model.safetensors"))
    model = LLADA_LOADER.load(directory)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, weights["model.transformer.wte.weight"])


def test_special_ids_are_read_from_the_tokenizer_files(llada_checkpoint, dream_checkpoint):
    assert {t: conversion.special_token_ids(llada_checkpoint[0])[t] for t in LLADA_SPECIAL} == LLADA_SPECIAL
    assert {t: conversion.special_token_ids(dream_checkpoint[0])[t] for t in DREAM_SPECIAL} == DREAM_SPECIAL


def test_a_hub_name_loads_through_the_same_loaders_for_sampling_and_training(llada_checkpoint, monkeypatch):
    import huggingface_hub

    from diff_trainer.models.loading import load_checkpoint, load_model, load_tokenizer
    from diff_trainer.training.args.model import ModelArguments

    directory, _ = llada_checkpoint
    hub_name = "GSAI-ML/LLaDA-8B-Instruct"
    requested = []

    def hub_file(repo_id, filename, **_):
        requested.append((repo_id, filename))
        if repo_id != hub_name:
            raise FileNotFoundError(repo_id)
        return str(directory / filename)

    def hub_snapshot(repo_id, **_):
        assert repo_id == hub_name
        return str(directory)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub_snapshot)

    from_hub, tokenizer = load_checkpoint(hub_name, dtype="float32")
    from_disk, _ = load_checkpoint(str(directory), dtype="float32")
    assert torch.equal(logits(from_hub), logits(from_disk))
    assert tokenizer.mask_token_id == 126336 and (hub_name, "config.json") in requested

    model_args = ModelArguments(model_name_or_path=hub_name)
    training_tokenizer = load_tokenizer(model_args)  # AutoTokenizer would need the remote code
    assert training_tokenizer.mask_token_id == 126336
    trained = load_model(model_args, training_tokenizer)
    assert trained.config.diffusion_config["mask_token_id"] == 126336
    assert torch.equal(logits(trained.eval()), logits(from_disk))
