"""The DDiT against an independent forward pass written from DESIGN.md §3b, and its transformers round trip."""

import itertools
import math

import pytest
import torch
from transformers import AutoConfig, AutoModel

import diff_trainer.models  # noqa: F401  registers the DDiT
from diff_trainer.models.ddit import DDiTConfig, DDiTModel
from models.ddit_reference import randomise, reference_forward

TINY = dict(
    vocab_size=13,
    hidden_size=32,
    cond_dim=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    dropout=0.0,
)


@pytest.mark.parametrize("scale_by_sigma", [False, True])
def test_forward_matches_reference(scale_by_sigma):
    model = randomise(DDiTModel(DDiTConfig(**TINY, scale_by_sigma=scale_by_sigma))).eval()
    ids = torch.randint(0, 13, (2, 7), generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 2.5])
    ours = model(ids, sigma=sigma).logits.double()
    reference = reference_forward(model.state_dict(), ids, sigma, 4, scale_by_sigma)
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4)


def test_padding_and_positions():
    """A left-padded row with shifted positions scores its real tokens as the unpadded row does."""
    model = randomise(DDiTModel(DDiTConfig(**TINY))).eval()
    row = torch.tensor([[3, 4, 5, 6]])
    padded = torch.tensor([[0, 0, 3, 4, 5, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    sigma = torch.tensor([1.0])
    alone = model(row, sigma=sigma).logits
    inside = model(padded, sigma=sigma, attention_mask=mask, position_ids=positions).logits[:, 2:]
    # other shapes take other CPU kernels: float32 rounding relative to logits of size ~10, not bitwise equality
    torch.testing.assert_close(inside, alone, rtol=1e-5, atol=1e-5)
    reference = reference_forward(model.state_dict(), padded, sigma, 4, False, positions, mask)[:, 2:]
    torch.testing.assert_close(inside.double(), reference, rtol=1e-5, atol=1e-4)


def test_fresh_model_is_zero_initialised_and_round_trips(tmp_path):
    """Saved and loaded back, the model computes bit for bit what it computed before (same weights, same kernels)."""
    config = DDiTConfig(**TINY)
    model = AutoModel.from_config(config)
    assert isinstance(model, DDiTModel)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids, sigma=torch.tensor([0.5])).logits, torch.zeros(1, 3, 13))  # DiT zero init
    assert model.blocks[0].attn_qkv.weight.std() > 0
    randomise(model)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "ddit"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    # the 13-entry output bias puts the file's later tensors 4 bytes off alignment: the loaded ones are copied out
    assert all(t.data_ptr() % 64 == 0 for t in itertools.chain(loaded.parameters(), loaded.buffers()))
    sigma = torch.tensor([0.7])
    assert torch.equal(loaded(ids, sigma=sigma).logits, model.eval()(ids, sigma=sigma).logits)


def test_sigma_is_required():
    model = DDiTModel(DDiTConfig(**TINY))
    with pytest.raises(ValueError, match="needs the noise level"):
        model(torch.tensor([[1, 2]]))


def test_resize_appends_average_states_and_keeps_the_others(tmp_path):
    """New states get the mean rows (input and output); existing scores move only by scale_by_sigma's log(N − 1)."""
    model = randomise(DDiTModel(DDiTConfig(**TINY, scale_by_sigma=True))).eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    ids = torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.4, 1.5])
    old = model(ids, sigma=sigma).logits
    model.resize_token_embeddings(15)
    assert model.config.vocab_size == 15 and model.get_output_embeddings().out_features == 15
    for name in ("vocab_embed.embedding", "output_layer.linear.weight", "output_layer.linear.bias"):
        grown = model.state_dict()[name]
        assert torch.equal(grown[:13], before[name])
        assert torch.equal(grown[13:], before[name].mean(0, keepdim=True).expand(2, *grown.shape[1:]))
    new = model(ids, sigma=sigma).logits
    at_input = torch.nn.functional.one_hot(ids, 13).bool()
    assert torch.allclose(new[..., :13][~at_input], (old + math.log(12 / 14))[~at_input], atol=1e-5)
    assert torch.allclose(new.double(), reference_forward(model.state_dict(), ids, sigma, 4, True), atol=1e-4)
    assert model.get_input_embeddings().weight.shape == (15, 32)
    model.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).config.vocab_size == 15
    with pytest.raises(ValueError, match="cannot drop states"):
        model.resize_token_embeddings(14)
