"""LLaDA's released layout as a native Llama: names, config, and logits against a forward written from LLaDA's
architecture description (not from transformers), in float32 to 1e-5."""

import pytest
import torch

from diff_trainer.models import llada
from diff_trainer.models.conversion import LLADA_LOADER
from models.published_layouts import llada_config
from models.reference import llada_forward


def test_every_released_name_maps_to_its_llama_parameter():
    assert llada.native_weight_name("model.transformer.wte.weight") == "model.embed_tokens.weight"
    assert llada.native_weight_name("model.transformer.ln_f.weight") == "model.norm.weight"
    assert llada.native_weight_name("model.transformer.ff_out.weight") == "lm_head.weight"
    block = {
        "attn_norm": "input_layernorm",
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "attn_out": "self_attn.o_proj",
        "ff_norm": "post_attention_layernorm",
        "ff_proj": "mlp.gate_proj",
        "up_proj": "mlp.up_proj",
        "ff_out": "mlp.down_proj",
    }
    for ours, theirs in block.items():
        expected = f"model.layers.17.{theirs}.weight"
        assert llada.native_weight_name(f"model.transformer.blocks.17.{ours}.weight") == expected
    for unknown in ("model.transformer.blocks.0.att_proj.weight", "model.transformer.wpe.weight", "lm_head.weight"):
        with pytest.raises(ValueError, match="llama block"):
            llada.native_weight_name(unknown)


def test_llada_8b_config_becomes_the_llama_config_of_the_same_network():
    published = llada_config(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, max_sequence_length=4096
    )
    config = llada.native_config(published)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (4096, 12288, 32)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (32, 32, 128)
    assert (config.vocab_size, config.max_position_embeddings) == (126464, 4096)
    assert config.rope_parameters["rope_theta"] == 500000.0 and config.rms_norm_eps == 1e-5
    assert not config.attention_bias and not config.mlp_bias and not config.tie_word_embeddings
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == (126081, 126081, None)
    assert config.is_causal is False
    assert LLADA_LOADER.mask_token_id(published) == 126336


def test_mlp_size_from_ratio_and_multi_query_attention():
    config = llada.native_config(llada_config(mlp_hidden_size=None, mlp_ratio=3, multi_query_attention=True))
    assert config.intermediate_size == 96 and config.num_key_value_heads == 1


@pytest.mark.parametrize(
    "setting",
    [
        {"block_type": "sequential"},
        {"include_qkv_bias": True},
        {"activation_type": "swiglu"},
        {"layer_norm_type": "default"},
        {"alibi": True},
    ],
)
def test_layouts_that_are_not_a_llama_layer_are_refused(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        llada.native_config(llada_config(**setting))


def test_converted_logits_equal_the_independent_llada_forward(llada_checkpoint):
    directory, weights = llada_checkpoint
    model = LLADA_LOADER.load(directory, dtype=torch.float32)
    ids = torch.tensor([[126080, 5, 77, 126336, 126336, 12, 126081], [40, 41, 126336, 3, 126348, 9, 0]])
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    reference = llada_forward(weights, llada_config(), ids)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # bidirectional: the first position sees a change of the last token
    changed = ids.clone()
    changed[:, -1] = 50
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=changed).logits[:, 0], ours[:, 0])


def test_bfloat16_load_keeps_the_network(llada_checkpoint):
    directory, weights = llada_checkpoint
    model = LLADA_LOADER.load(directory, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(model.lm_head.weight.float(), weights["model.transformer.ff_out.weight"])
    ids = torch.tensor([[1, 2, 126336, 4]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    reference = llada_forward(weights, llada_config(), ids)
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max()


def test_llada_8b_has_the_parameter_count_the_readme_quotes():
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from diff_trainer.models.conversion import Conversion

    config = llada.native_config(
        llada_config(
            d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, max_sequence_length=4096
        )
    )
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    # per layer 4 x 4096^2 (attention) + 3 x 4096 x 12288 (SwiGLU) + 2 x 4096 (norms); wte and ff_out 126464 x 4096
    by_hand = 32 * (4 * 4096**2 + 3 * 4096 * 12288 + 2 * 4096) + 2 * 126464 * 4096 + 4096
    assert model.num_parameters() == by_hand == 8_015_581_184
    summary = Conversion("out", "LLaDA", "LlamaForCausalLM", by_hand, torch.bfloat16).summary()
    assert summary == "out: LLaDA as LlamaForCausalLM, 8.02B parameters, 16.0 GB in bfloat16"
