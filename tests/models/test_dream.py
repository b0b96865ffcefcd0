"""Dream's released layout as a native Qwen2: config, shift flag, and logits against a forward written from the
architecture description (Qwen2 block with biased q/k/v, full attention), in float32 to 1e-5."""

import json
from pathlib import Path

import pytest
import torch

from diff_trainer.models import dream
from diff_trainer.models.conversion import DREAM_LOADER
from models.published_layouts import ON_CPU, dream_config
from models.reference import dream_forward


def test_dream_7b_config_becomes_the_qwen2_config_of_the_same_network():
    published = dream_config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=131072,
    )
    config = dream.native_config(published)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (3584, 18944, 28)
    assert (config.num_attention_heads, config.num_key_value_heads) == (28, 4)
    assert (config.vocab_size, config.rope_parameters["rope_theta"], config.rms_norm_eps) == (152064, 1e6, 1e-6)
    assert config.use_sliding_window is False and not config.tie_word_embeddings and config.is_causal is False
    assert DREAM_LOADER.mask_token_id(published) == 151666


def test_names_are_qwen2_names_and_anything_else_is_refused():
    assert dream.native_weight_name("model.layers.3.self_attn.q_proj.bias") == "model.layers.3.self_attn.q_proj.bias"
    with pytest.raises(ValueError, match="Qwen2"):
        dream.native_weight_name("transformer.h.0.attn.weight")


@pytest.mark.parametrize("setting", [{"use_sliding_window": True}, {"rope_scaling": {"type": "yarn", "factor": 4}}])
def test_settings_the_released_models_do_not_use_are_refused(setting):
    with pytest.raises(ValueError):
        dream.native_config(dream_config(**setting))


def test_converted_logits_equal_the_independent_dream_forward(dream_checkpoint):
    directory, weights = dream_checkpoint
    model = DREAM_LOADER.load(directory)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.float32
    settings = model.config.diffusion_config
    assert (settings["mask_token_id"], settings["shift_logits"], settings["eos_token_ids"]) == (
        151666,
        True,
        [151643, 151645],
    )
    ids = torch.tensor([[151665, 10, 151666, 151666, 200, 151643], [7, 151644, 8, 151666, 151645, 3]])
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    torch.testing.assert_close(ours, dream_forward(weights, dream_config(), ids), atol=1e-5, rtol=1e-5)


def test_retraining_without_shift_logits_is_refused(dream_checkpoint):
    from diff_trainer.diffusion_config import write_diffusion_config

    config = DREAM_LOADER.config(dream_checkpoint[0])
    with pytest.raises(ValueError, match="--shift_logits"):
        write_diffusion_config(
            config, mask_token_id=151666, shift_logits=False, noise_schedule="linear", time_eps=1e-3, dff_token="<DFF>"
        )
    write_diffusion_config(
        config, mask_token_id=151666, shift_logits=True, noise_schedule="linear", time_eps=1e-3, dff_token="<DFF>"
    )
    assert config.diffusion_config["eos_token_ids"] == [151643, 151645]  # kept when not given again


def test_diff_generate_samples_the_released_dream_with_shifted_logits(dream_checkpoint, tmp_path):
    from diff_trainer.cli import generate

    output = tmp_path / "out.jsonl"
    generate.main(
        [
            "--model",
            str(dream_checkpoint[0]),
            "--prompt",
            "hello",
            "--gen_length",
            "4",
            "--steps",
            "4",
            "--output",
            str(output),
        ]
    )
    settings = json.loads(output.read_text().splitlines()[0])["settings"]
    assert (settings["shift"], settings["mask_token_id"], settings["eos_token_id"]) == (True, 151666, [151643, 151645])


def test_the_readme_dream_command_fine_tunes_with_shifted_logits(dream_checkpoint, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    import run_clm_diff
    from diff_trainer.models.conversion import convert_checkpoint

    converted = convert_checkpoint(dream_checkpoint[0], tmp_path / "dream").output_dir
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"text": f"{a}*{b}=<DFF>{a * b}"}) + "\n" for a in range(4) for b in range(3)))
    monkeypatch.chdir(Path(__file__).parents[2])
    run_clm_diff.main(
        [
            "configs/llada_8b_sft.yaml",
            *ON_CPU,
            "--model_name_or_path",
            str(converted),
            "--shift_logits",
            "--train_file",
            str(data),
            "--validation_file",
            str(data),
            "--block_size",
            "16",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 2
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.convert_tokens_to_ids("<DFF>") == 151667 and tokenizer.mask_token_id == 151666
