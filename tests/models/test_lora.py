"""LoRA with newly added tokens: the new rows train, save with the adapter, and reload to identical logits."""

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import ByT5Tokenizer

from conftest import DFF, MASK, make_tiny_llama
from diff_trainer.models.bidirectional import make_bidirectional
from diff_trainer.models.loading import add_special_tokens, load_model
from diff_trainer.training.model import apply_lora
from models.test_loading import model_args, tiny_model

CASES = {
    "llama-untied": dict(family="llama", tie_word_embeddings=False),
    "llama-tied": dict(family="llama", tie_word_embeddings=True),
    "bert": dict(family="bert"),  # tied output layer with a bias
}


def save_base(directory, case):
    """A tiny pretrained checkpoint that knows only the 384 byte-tokenizer ids; any output bias is non-zero."""
    if case["family"] == "llama":
        base = make_tiny_llama(384, bidirectional=False, tie_word_embeddings=case["tie_word_embeddings"])
    else:
        base = tiny_model(ByT5Tokenizer(), case["family"])
        torch.nn.init.normal_(base.get_output_embeddings().bias)
    base.save_pretrained(directory)


def load_base(directory, case, tokenizer, seed):
    """The checkpoint resized for `tokenizer`; `seed` drives the random rows the resize invents."""
    torch.manual_seed(seed)
    args = model_args(
        model_name_or_path=str(directory), model_type=None, config_overrides=None, masked_lm=case["family"] == "bert"
    )
    return make_bidirectional(load_model(args, tokenizer)).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("case_name", list(CASES))
def test_lora_with_new_tokens_reloads_to_identical_logits(tmp_path, case_name):
    case = CASES[case_name]
    save_base(tmp_path / "base", case)
    tokenizer = ByT5Tokenizer()
    new_ids = add_special_tokens(tokenizer, DFF, MASK)
    assert new_ids == [384, 385]
    base = load_base(tmp_path / "base", case, tokenizer, seed=1)
    ids = torch.tensor([[72, 105, 384, 385, 385, 33]])
    before_lora = logits(base, ids)
    original_rows = base.get_input_embeddings().weight.detach().clone()

    model = apply_lora(base, model_args(lora_dropout=0.0), new_ids)
    torch.testing.assert_close(logits(model, ids), before_lora, rtol=0, atol=0)  # fresh adapters change nothing
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert any("lora_A" in name for name in trainable)
    assert not any(name.endswith(("q_proj.base_layer.weight", "query.base_layer.weight")) for name in trainable)

    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    targets = torch.tensor([[105, 384, 385, 33, 72, 384]])
    loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0], targets[0])
    loss.backward()
    optimizer.step()
    model.eval()
    trained = logits(model, ids)
    assert not torch.allclose(trained, before_lora)

    with torch.no_grad():
        embedded = model.get_input_embeddings()(torch.arange(386))
    assert not torch.allclose(embedded[384:], original_rows[384:])  # the new tokens' rows trained
    if case_name.startswith("llama"):  # trainable tokens touch only the new rows
        torch.testing.assert_close(embedded[:384], original_rows[:384], rtol=0, atol=0)

    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    if case_name.startswith("llama"):  # the trained rows of the new tokens are stored with the adapter
        delta = saved["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
        torch.testing.assert_close(delta, embedded[384:], rtol=0, atol=0)

    fresh_base = load_base(tmp_path / "base", case, tokenizer, seed=2)
    assert not torch.equal(fresh_base.get_input_embeddings().weight[384:], original_rows[384:])  # new random rows
    reloaded = PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded, ids), trained, rtol=0, atol=1e-6)


def test_lora_without_new_tokens_trains_only_adapters(tmp_path):
    save_base(tmp_path / "base", CASES["llama-untied"])
    tokenizer = ByT5Tokenizer()
    base = load_base(tmp_path / "base", CASES["llama-untied"], tokenizer, seed=0)
    model = apply_lora(base, model_args(lora_target_modules=["q_proj", "v_proj"]), [])
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} == {"q_proj", "v_proj"}
