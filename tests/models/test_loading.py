"""Tokenizer/model loading, dropout, bidirectional attention and the diffusion config (tiny models, no downloads)."""

import os
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    ByT5Tokenizer,
    LlamaConfig,
    LlavaConfig,
    PreTrainedTokenizerFast,
)

from conftest import DFF, MASK, make_tiny_llama
from diff_trainer.cli import generate as generate_cli
from diff_trainer.diffusion_config import read_diffusion_config, write_diffusion_config
from diff_trainer.models import registry
from diff_trainer.models.bidirectional import attends_to_future, is_encoder_model, is_peft_model, make_bidirectional
from diff_trainer.models.loading import add_special_tokens, load_checkpoint, load_model, load_tokenizer, set_dropout
from diff_trainer.models.registry import CheckpointLoader
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
from diff_trainer.training.model import prepare_model
from diff_trainer.training.trainer import DiffusionTrainer

TINY = "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4"
OVERRIDES = {
    "llama": TINY + ",num_key_value_heads=4",
    "qwen2": TINY + ",num_key_value_heads=4",
    "gpt2": "n_embd=32,n_layer=2,n_head=4,n_positions=64",
    "bert": TINY + ",max_position_embeddings=64",
    "modernbert": TINY,
}
DECODERS = ("llama", "qwen2", "gpt2")
ENCODERS = ("bert", "modernbert")
EXPECTED_DROPOUTS = {
    "llama": ["attention_dropout"],
    "qwen2": ["attention_dropout"],
    "gpt2": ["resid_pdrop", "embd_pdrop", "attn_pdrop"],
    "bert": ["hidden_dropout_prob", "attention_probs_dropout_prob"],
    "modernbert": ["attention_dropout", "embedding_dropout", "mlp_dropout"],
}


def model_args(**overrides):
    """ModelArguments-like settings for a tiny from-scratch Llama on the byte tokenizer."""
    settings = dict(
        model_name_or_path=None,
        model_type="llama",
        config_overrides=OVERRIDES["llama"],
        config_name=None,
        tokenizer_name="byte",
        dtype="float32",
        dropout=None,
        attn_implementation="sdpa",
        trust_remote_code=False,
        masked_lm=False,
        mask_token=MASK,
        use_lora=False,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        lora_target_modules=["all-linear"],
    )
    settings.update(overrides)
    return SimpleNamespace(**settings)


def tiny_model(tokenizer, family, seed=0, **overrides):
    torch.manual_seed(seed)
    args = model_args(model_type=family, config_overrides=OVERRIDES[family], masked_lm=family in ENCODERS, **overrides)
    return load_model(args, tokenizer).eval()


@pytest.fixture
def tokenizer():
    tokenizer = load_tokenizer(model_args())
    add_special_tokens(tokenizer, DFF, MASK)
    return tokenizer


def save_word_tokenizer(directory, **special_tokens):
    """A 4-word fast tokenizer with only the given special tokens, saved to `directory`."""
    vocab = {"a": 0, "b": 1, "[UNK]": 2, "[SEP]": 3, "[MASK]": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **special_tokens).save_pretrained(directory)
    return str(directory)


# --- tokenizer ---------------------------------------------------------------------------------------------------


def test_byte_tokenizer_has_eos_and_its_own_pad():
    tokenizer = load_tokenizer(model_args())
    assert isinstance(tokenizer, ByT5Tokenizer)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("</s>", "<pad>")


def test_tokenizer_without_pad_pads_with_eos(tmp_path):
    tokenizer = load_tokenizer(model_args(tokenizer_name=save_word_tokenizer(tmp_path, eos_token="[SEP]")))
    assert tokenizer.pad_token == tokenizer.eos_token == "[SEP]"
    assert tokenizer.pad_token_id == 3


def test_tokenizer_without_eos_uses_sep_or_adds_one(tmp_path):
    with_sep = load_tokenizer(model_args(tokenizer_name=save_word_tokenizer(tmp_path / "sep", sep_token="[SEP]")))
    assert with_sep.eos_token_id == 3 and len(with_sep) == 5
    bare = load_tokenizer(model_args(tokenizer_name=save_word_tokenizer(tmp_path / "bare")))
    assert bare.eos_token == "<|endoftext|>" and bare.eos_token_id == 5 and bare.pad_token_id == 5
    assert bare("a b<|endoftext|>", add_special_tokens=False).input_ids == [0, 1, 5]


def test_tokenizer_comes_from_the_model_directory_when_not_named(tmp_path):
    saved = ByT5Tokenizer()
    add_special_tokens(saved, DFF, MASK)
    saved.save_pretrained(tmp_path)
    tokenizer = load_tokenizer(model_args(tokenizer_name=None, model_name_or_path=str(tmp_path)))
    assert len(tokenizer) == 386 and tokenizer.mask_token == MASK
    assert add_special_tokens(tokenizer, DFF, MASK) == []


@pytest.mark.parametrize("kind", ["byte", "char"])
@pytest.mark.parametrize("family", DECODERS)
def test_a_checkpoint_reloads_the_tokenizer_it_was_saved_with(tmp_path, family, kind):
    """transformers 5 gives a qwen2 checkpoint Qwen2's tokenizer class whatever tokenizer_config.json names."""
    args = model_args(tokenizer_name=kind)
    tokenizer = load_tokenizer(args, ["12+7=<DFF>19"] if kind == "char" else None)
    add_special_tokens(tokenizer, DFF, MASK)
    model = tiny_model(tokenizer, family, tokenizer_name=kind)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = f"7+12={DFF}19{MASK}"
    for reloaded in (
        load_checkpoint(str(tmp_path))[1],
        load_tokenizer(model_args(tokenizer_name=None, model_name_or_path=str(tmp_path))),
    ):
        assert type(reloaded) is type(tokenizer) and len(reloaded) == len(tokenizer)
        assert reloaded.encode(text) == tokenizer.encode(text) and reloaded.mask_token_id == tokenizer.mask_token_id


def test_tokenizer_needs_a_source():
    with pytest.raises(ValueError, match="--tokenizer_name"):
        load_tokenizer(model_args(tokenizer_name=None, model_name_or_path=None))


def test_special_tokens_are_single_new_ids_and_adding_is_idempotent():
    tokenizer = load_tokenizer(model_args())
    assert add_special_tokens(tokenizer, DFF, MASK) == [384, 385]
    assert tokenizer.convert_tokens_to_ids(DFF) == 384 and tokenizer.mask_token_id == 385
    assert tokenizer("a<DFF>b<|mdm_mask|>", add_special_tokens=False).input_ids == [100, 384, 101, 385]
    assert add_special_tokens(tokenizer, DFF, MASK) == []
    assert len(tokenizer) == 386


def test_own_mask_token_is_kept(tmp_path):
    tokenizer = load_tokenizer(model_args(tokenizer_name=save_word_tokenizer(tmp_path, mask_token="[MASK]")))
    new_ids = add_special_tokens(tokenizer, DFF, MASK)
    assert tokenizer.mask_token == "[MASK]" and tokenizer.mask_token_id == 4
    assert new_ids == [tokenizer.convert_tokens_to_ids(DFF)] == [len(tokenizer) - 1]


def test_no_tokens_requested_adds_nothing():
    tokenizer = load_tokenizer(model_args())
    assert add_special_tokens(tokenizer, None, None) == [] and tokenizer.mask_token is None


# --- loading and dropout -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", DECODERS + ENCODERS)
def test_from_scratch_model_fits_the_tokenizer(tokenizer, family):
    model = tiny_model(tokenizer, family)
    assert model.get_input_embeddings().weight.shape[0] == model.config.vocab_size == len(tokenizer)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert model.dtype == torch.float32


@pytest.mark.parametrize("family", DECODERS + ENCODERS)
def test_dropout_reaches_every_dropout_probability(tokenizer, family):
    model = tiny_model(tokenizer, family, dropout=0.25)
    for name in EXPECTED_DROPOUTS[family]:
        assert getattr(model.config, name) == 0.25, name
    ids = torch.randint(3, 300, (2, 12))
    model.train()
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("family", DECODERS + ENCODERS)
def test_zero_dropout_makes_training_forward_deterministic(tokenizer, family):
    model = tiny_model(tokenizer, family, dropout=0.0).train()
    ids = torch.randint(3, 300, (2, 12))
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_set_dropout_leaves_unset_values_and_reaches_sub_configs():
    config = LlavaConfig(text_config={"model_type": "llama", "hidden_size": 32})
    names = set_dropout(config, 0.3)
    assert "text_config.attention_dropout" in names and config.text_config.attention_dropout == 0.3
    bert = tiny_model(load_tokenizer(model_args()), "bert").config
    set_dropout(bert, 0.3)
    assert bert.classifier_dropout is None  # None means "use hidden_dropout_prob": not a probability to overwrite


def test_bfloat16_dtype(tokenizer):
    assert tiny_model(tokenizer, "llama", dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype"):
        tiny_model(tokenizer, "llama", dtype="float33")


def test_pretrained_model_is_resized_and_keeps_its_weights(tmp_path, tokenizer):
    saved = make_tiny_llama(384, bidirectional=False)
    saved.save_pretrained(tmp_path)
    for dtype in ("float32", "auto"):
        model = load_model(
            model_args(model_name_or_path=str(tmp_path), model_type=None, config_overrides=None, dtype=dtype), tokenizer
        )
        rows = model.get_input_embeddings().weight
        assert rows.shape == (386, 32) and model.dtype == torch.float32
        assert torch.equal(rows[:384], saved.get_input_embeddings().weight)
        assert model.config.pad_token_id == tokenizer.pad_token_id == 0
        assert model.config.eos_token_id == tokenizer.eos_token_id == 1


def test_model_needs_a_source_and_overrides_need_scratch(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="--model_type"):
        load_model(model_args(model_type=None), tokenizer)
    with pytest.raises(ValueError, match="--config_overrides"):
        load_model(model_args(model_name_or_path=str(tmp_path)), tokenizer)
    with pytest.raises(ValueError, match="Unknown --model_type"):
        load_model(model_args(model_type="no-such-model"), tokenizer)


def test_config_name_builds_from_scratch(tmp_path, tokenizer):
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4).save_pretrained(
        tmp_path
    )
    model = load_model(
        model_args(config_name=str(tmp_path), model_type=None, config_overrides="num_hidden_layers=2"), tokenizer
    )
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)


DEMO_OVERRIDES = (
    "hidden_size=128,intermediate_size=384,num_hidden_layers=4,num_attention_heads=4,"
    "num_key_value_heads=4,max_position_embeddings=512"
)  # configs/demo.yaml


def test_head_dim_follows_overridden_hidden_size_and_heads(tokenizer, caplog):
    with caplog.at_level("INFO", logger="diff_trainer.models.loading"):
        model = load_model(model_args(config_overrides=DEMO_OVERRIDES), tokenizer)
    assert model.config.head_dim == 32
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (128, 128)
    # by hand: 4 layers x (attention 4·128·128 + MLP 3·128·384 + 2 norms of 128) + untied embedding and head
    # (386 x 128 each) + final norm 128
    expected = 4 * (4 * 128 * 128 + 3 * 128 * 384 + 2 * 128) + 2 * 386 * 128 + 128
    assert expected == 951_936 == sum(p.numel() for p in model.parameters())
    assert "951,936 parameters" in caplog.text and "head_dim 32" in caplog.text


def test_overriding_the_layer_count_derives_the_layer_types_again(tmp_path, tokenizer):
    model = tiny_model(tokenizer, "qwen2")  # Qwen2Config() derives 32 layer_types; the override asks for 2 layers
    assert model.config.layer_types == ["full_attention"] * 2 and len(model.model.layers) == 2
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).layer_types == ["full_attention"] * 2


def test_explicit_or_underived_head_dim_is_kept(tokenizer):
    explicit = load_model(model_args(config_overrides=TINY + ",head_dim=16"), tokenizer)
    assert explicit.config.head_dim == 16 and explicit.model.layers[0].self_attn.q_proj.weight.shape == (64, 32)
    # Gemma's default head_dim (256) is its own setting, not hidden_size / heads: it stays.
    gemma = load_model(model_args(model_type="gemma", config_overrides=TINY + ",num_key_value_heads=4"), tokenizer)
    assert gemma.config.head_dim == 256
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        load_model(model_args(config_overrides="hidden_size=30,num_attention_heads=4"), tokenizer)


# --- bidirectional attention -------------------------------------------------------------------------------------


def first_logits_after_changing_last_token(model):
    ids = torch.tensor([[10, 20, 30, 40, 50, 60], [10, 20, 30, 40, 50, 61]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return logits[0, 0], logits[1, 0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", DECODERS)
def test_decoder_becomes_bidirectional(tokenizer, family, attn):
    model = tiny_model(tokenizer, family, attn_implementation=attn)
    assert not is_encoder_model(model)
    assert torch.equal(*first_logits_after_changing_last_token(model))  # causal: position 0 sees only itself
    make_bidirectional(model)
    assert model.config.is_causal is False
    assert not torch.allclose(*first_logits_after_changing_last_token(model))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ENCODERS)
def test_encoder_is_accepted_as_bidirectional(tokenizer, family, attn):
    model = tiny_model(tokenizer, family, attn_implementation=attn)
    assert is_encoder_model(model)
    assert make_bidirectional(model) is model
    assert not torch.allclose(*first_logits_after_changing_last_token(model))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", DECODERS + ENCODERS)
def test_left_padding_is_still_ignored(tokenizer, family, attn):
    model = make_bidirectional(tiny_model(tokenizer, family, attn_implementation=attn))
    real = [72, 101, 108, 108, 111]
    ids = torch.tensor([[0, 0, 0, *real], [77, 250, 3, *real]])
    attention_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]] * 2)
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=attention_mask).logits[:, 3:]
        unmasked = model(input_ids=ids).logits[:, 3:]
    assert (masked[0] - masked[1]).abs().max() < 1e-5
    assert (unmasked[0] - unmasked[1]).abs().max() > 1e-4  # the pads would matter if attended


def test_model_that_ignores_is_causal_is_refused(tokenizer):
    mamba = load_model(
        model_args(model_type="mamba", config_overrides="hidden_size=32,num_hidden_layers=2", attn_implementation=None),
        tokenizer,
    ).eval()
    with pytest.raises(ValueError, match="'mamba'"):
        make_bidirectional(mamba)
    assert mamba.config.is_causal is True


def test_causal_bert_decoder_is_not_an_encoder(tokenizer):
    config_overrides = OVERRIDES["bert"] + ",is_decoder=True"
    model = load_model(model_args(model_type="bert", config_overrides=config_overrides), tokenizer)
    assert type(model).__name__ == "BertLMHeadModel" and not is_encoder_model(model)


def test_gradient_checkpointing_gives_the_same_bidirectional_gradients(byte_tokenizer):
    model = make_tiny_llama(len(byte_tokenizer), bidirectional=True).train()
    ids = torch.tensor([[40, 50, 60, 70, 80, 90, 385, 384]])

    def gradients():
        model.zero_grad()
        logits = model(input_ids=ids).logits
        torch.nn.functional.cross_entropy(logits[0, :1], ids[0, :1]).backward()  # loss at position 0 only
        return {name: param.grad.clone() for name, param in model.named_parameters()}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.model.gradient_checkpointing
    checkpointed = gradients()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    embedding_grad = checkpointed["model.embed_tokens.weight"]
    assert embedding_grad[384].abs().sum() > 0  # the last token still influences position 0


# --- diffusion config ---------------------------------------------------------------------------------------------


def test_diffusion_config_survives_save_and_reload(tmp_path, tokenizer):
    model = make_bidirectional(tiny_model(tokenizer, "llama"))
    assert read_diffusion_config(model.config) is None
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=True,
        noise_schedule="cosine",
        time_eps=1e-3,
        dff_token=DFF,
    )
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.is_causal is False and attends_to_future(reloaded)
    assert read_diffusion_config(reloaded.config) == {
        "objective": "masked_diffusion",
        "mask_token_id": 385,
        "shift_logits": True,
        "noise_schedule": "cosine",
        "time_eps": 1e-3,
        "dff_token": DFF,
        "auto_class": "AutoModelForCausalLM",
    }
    ids = torch.tensor([[72, 384, 385, 385]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_writing_the_diffusion_config_makes_the_config_bidirectional(tokenizer):
    model = tiny_model(tokenizer, "qwen2")
    write_diffusion_config(
        model.config, mask_token_id=385, shift_logits=False, noise_schedule="linear", time_eps=1e-3, dff_token=DFF
    )
    assert attends_to_future(model)


def test_mask_token_outside_the_vocabulary_is_refused(byte_tokenizer):
    model = make_tiny_llama(384)
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        write_diffusion_config(
            model.config,
            mask_token_id=byte_tokenizer.mask_token_id,
            shift_logits=False,
            noise_schedule="linear",
            time_eps=1e-3,
            dff_token=DFF,
        )
    assert read_diffusion_config(model.config) is None


# --- prepare_model and load_checkpoint ------------------------------------------------------------------------------

SETTINGS = {"shift_logits": False, "noise_schedule": "linear", "time_eps": 1e-3, "dff_token": DFF}


def same_logits(first, second, ids, atol=0.0):
    with torch.no_grad():
        torch.testing.assert_close(first(input_ids=ids).logits, second(input_ids=ids).logits, rtol=0, atol=atol)


def test_encoder_checkpoint_records_and_reloads_its_auto_class(tmp_path, tokenizer):
    torch.manual_seed(0)
    args = model_args(model_type="bert", config_overrides=OVERRIDES["bert"], masked_lm=True)
    model = prepare_model(args, tokenizer, "diffusion", diffusion_settings=SETTINGS).eval()
    assert read_diffusion_config(model.config)["auto_class"] == "AutoModelForMaskedLM"
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_checkpoint(str(tmp_path))
    assert type(loaded).__name__ == "BertForMaskedLM" and len(loaded_tokenizer) == len(tokenizer)
    same_logits(loaded, model, torch.tensor([[72, 384, 385, 33]]))


def test_prepare_model_refuses_flags_that_do_not_fit(tokenizer):
    with pytest.raises(ValueError, match="--masked_lm .* only applies with --train_diff_model"):
        prepare_model(model_args(masked_lm=True), tokenizer, "causal")
    bert = model_args(model_type="bert", config_overrides=OVERRIDES["bert"], masked_lm=True)
    with pytest.raises(ValueError, match="--shift_logits adapts a causal LM"):
        prepare_model(bert, tokenizer, "diffusion", diffusion_settings={**SETTINGS, "shift_logits": True})
    with pytest.raises(ValueError, match="not a masked-diffusion checkpoint"):
        prepare_model(model_args(), tokenizer, "diffusion")


def lora_checkpoint(tmp_path, tokenizer):
    """A causal base checkpoint, and a diffusion LoRA run on it saved adapter-only by DiffusionTrainer."""
    make_tiny_llama(384, bidirectional=False).save_pretrained(tmp_path / "base")
    args = model_args(model_name_or_path=str(tmp_path / "base"), model_type=None, config_overrides=None, use_lora=True)
    torch.manual_seed(1)
    model = prepare_model(args, tokenizer, "diffusion", new_token_ids=[384, 385], diffusion_settings=SETTINGS)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "trainable_tokens" in name:
                parameter.normal_(0, 0.3)  # a trained adapter and trained rows of the new tokens
    training = DiffusionTrainingArguments(
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        report_to="none",
        train_diff_model=True,
        loss_normalization="token",
    )
    DiffusionTrainer(model, training, processing_class=tokenizer).save_model(str(tmp_path / "adapter"))
    return model.eval(), str(tmp_path / "adapter")


def test_adapter_only_checkpoint_loads_with_its_settings_and_merges(tmp_path, tokenizer):
    trained, path = lora_checkpoint(tmp_path, tokenizer)
    assert not os.path.exists(os.path.join(path, "model.safetensors"))  # adapter-only
    ids = torch.tensor([[72, 384, 385, 385, 33]])
    loaded, _ = load_checkpoint(path)
    assert is_peft_model(loaded) and read_diffusion_config(loaded.config)["mask_token_id"] == 385
    assert loaded.config.is_causal is False
    same_logits(loaded, trained, ids)
    merged, _ = load_checkpoint(path, merge_lora=True)
    assert not is_peft_model(merged) and read_diffusion_config(merged.config)["dff_token"] == DFF
    same_logits(merged, trained, ids, atol=1e-5)


def test_the_sampling_cli_reads_adapter_checkpoints(tmp_path, tokenizer, capsys):
    _, path = lora_checkpoint(tmp_path, tokenizer)
    flags = ["--model", path, "--prompt", "ab", "--gen_length", "6", "--steps", "6"]
    generate_cli.main(flags)
    plain = capsys.readouterr().out
    generate_cli.main(flags + ["--merge_lora"])
    assert capsys.readouterr().out == plain  # the prompt header and the completion


def test_missing_checkpoint_and_foreign_layouts(tmp_path, tokenizer, monkeypatch):
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at {tmp_path / 'nope'}"):
        load_checkpoint(str(tmp_path / "nope"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "weights.npz").write_text("")
    tokenizer.save_pretrained(foreign)
    built = make_tiny_llama(len(tokenizer))
    monkeypatch.setattr(
        registry,
        "CHECKPOINT_LOADERS",
        [CheckpointLoader(lambda path: os.path.exists(os.path.join(path, "weights.npz")), lambda path, **_: built)],
    )
    model, _ = load_checkpoint(str(foreign))
    assert model is built


def test_training_can_start_from_an_adapter_only_checkpoint(tmp_path, tokenizer):
    """DPO or further training from a LoRA run: load_model goes through the checkpoint loader, adapters merged."""
    trained, path = lora_checkpoint(tmp_path, tokenizer)
    args = model_args(model_name_or_path=path, model_type=None, config_overrides=None)
    model = prepare_model(args, tokenizer, "diffusion")
    assert not is_peft_model(model) and read_diffusion_config(model.config)["mask_token_id"] == 385
    same_logits(model.eval(), trained, torch.tensor([[72, 384, 385, 33]]), atol=1e-5)


def test_a_missing_local_model_directory_is_named_plainly(tmp_path, tokenizer):
    missing = str(tmp_path / "outputs" / "never_trained")
    with pytest.raises(FileNotFoundError, match=f"--model_name_or_path: no checkpoint at {missing} "):
        load_model(model_args(model_name_or_path=missing, model_type=None, config_overrides=None), tokenizer)
    with pytest.raises(FileNotFoundError, match="--tokenizer_name: no checkpoint at ./no_tokenizer "):
        load_tokenizer(model_args(tokenizer_name="./no_tokenizer"))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file; give the checkpoint's directory"):
        load_tokenizer(model_args(tokenizer_name=str(tmp_path / "model.safetensors")))
