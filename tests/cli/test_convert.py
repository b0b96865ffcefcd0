"""diff-convert: converts a LLaDA checkpoint that then loads natively; clear errors for what it cannot convert."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from diff_trainer.cli import convert
from diff_trainer.models.conversion import LLADA_LOADER
from models.published_layouts import write_llada_checkpoint


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("convert") / "llada"
    write_llada_checkpoint(directory)
    return directory


def test_convert_writes_a_native_checkpoint_in_the_chosen_dtype(llada_dir, tmp_path, capsys):
    convert.main([str(llada_dir), str(tmp_path / "out"), "--dtype", "float32"])
    # 2 layers x (attention 4x32x32 minus 2x half-size k/v, SwiGLU 3x32x48, 2 norms) + 2 x 126464x32 + final norm
    parameters = 2 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 32 * 48 + 2 * 32) + 2 * 126464 * 32 + 32
    assert capsys.readouterr().out.strip() == (
        f"{tmp_path / 'out'}: LLaDA as LlamaForCausalLM, {parameters / 1e9:.2f}B"
        f" parameters, {parameters * 4 / 1e9:.1f} GB in float32"
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert model.dtype == torch.float32
    ids = torch.tensor([[3, 126336, 126336, 9]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, LLADA_LOADER.load(llada_dir)(input_ids=ids).logits, atol=0, rtol=0
        )


def test_an_existing_output_needs_overwrite(llada_dir, tmp_path):
    convert.main([str(llada_dir), str(tmp_path / "out")])
    with pytest.raises(SystemExit) as refused:
        convert.main([str(llada_dir), str(tmp_path / "out")])
    assert refused.value.code == 2
    convert.main([str(llada_dir), str(tmp_path / "out"), "--overwrite", "--dtype", "bfloat16"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def test_a_checkpoint_of_another_kind_is_refused_with_its_model_type(tmp_path, capsys):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(SystemExit) as exit_info:
        convert.main([str(tmp_path / "gpt2"), str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "model_type 'gpt2'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
