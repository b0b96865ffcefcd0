import pytest
import torch
from conftest import make_tiny_llama

from diff_trainer.diffusion.attention import annealed_attention_mask, annealing_ratio

MIN = torch.finfo(torch.float32).min


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_annealing_ratio():
    assert [annealing_ratio(step, 100) for step in (0, 25, 100, 250)] == [0.0, 0.25, 1.0, 1.0]
    assert annealing_ratio(0, 0) == 1.0


def test_ratio_zero_is_causal_and_values_are_zero_or_min():
    mask = annealed_attention_mask(torch.ones(2, 5, dtype=torch.long), 0.0, generator=gen())
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.float32
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    assert (mask[:, 0][:, causal] == 0).all() and (mask[:, 0][:, ~causal] == MIN).all()


def test_ratio_one_is_bidirectional_and_dtype_follows():
    mask = annealed_attention_mask(torch.ones(1, 4, dtype=torch.long), 1.0, dtype=torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and (mask == 0).all()


def test_future_edge_density_matches_ratio():
    length = 64
    for ratio in (0.1, 0.5, 0.9):
        mask = annealed_attention_mask(torch.ones(8, length, dtype=torch.long), ratio, generator=gen(1))
        future = torch.ones(length, length, dtype=torch.bool).triu(1)
        allowed = (mask[:, 0][:, future] == 0).float()
        sigma = (ratio * (1 - ratio) / allowed.numel()) ** 0.5
        assert abs(allowed.mean().item() - ratio) < 4 * sigma
        assert (mask[:, 0][:, ~future] == 0).all()  # the causal part is always allowed
    # rows draw their own future edges
    assert not torch.equal(mask[0], mask[1])


def test_padding_keys_are_never_allowed():
    attention = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    for ratio in (0.0, 0.5, 1.0):
        mask = annealed_attention_mask(attention, ratio, generator=gen(2))
        padded_keys = (attention == 0)[:, None, None, :].expand_as(mask)
        assert (mask[padded_keys] == MIN).all()


@pytest.fixture(scope="module")
def causal_llama():
    return make_tiny_llama(16, bidirectional=False, seed=1)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_llama_accepts_the_4d_mask(causal_llama, implementation):
    model = causal_llama
    model.set_attn_implementation(implementation)
    ids = torch.randint(0, 16, (2, 6), generator=gen(3))
    ones = torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        causal = model(ids).logits
        bidirectional = model(ids, attention_mask=ones, is_causal=False).logits
        assert torch.allclose(model(ids, attention_mask=annealed_attention_mask(ones, 0.0)).logits, causal, atol=1e-5)
        assert torch.allclose(model(ids, attention_mask=annealed_attention_mask(ones, 1.0)).logits, bidirectional,
                              atol=1e-5)
        assert not torch.allclose(causal, bidirectional, atol=1e-3)

        # a padded key is ignored: changing its token changes no other position's output
        padded = ones.clone()
        padded[0, 2] = 0
        mask = annealed_attention_mask(padded, 0.5, generator=gen(4))
        changed = ids.clone()
        changed[0, 2] = (ids[0, 2] + 1) % 16
        difference = (model(ids, attention_mask=mask).logits - model(changed, attention_mask=mask).logits).abs()
        others = torch.ones(2, 6, dtype=torch.bool)
        others[0, 2] = False
        assert difference[others].max() < 1e-5 and difference[0, 2].max() > 1e-3

        # left padding under a causal mask leaves query 0 with no allowed key: still no NaN
        left_padded = torch.tensor([[0, 1, 1, 1, 1, 1]] * 2)
        assert torch.isfinite(model(ids, attention_mask=annealed_attention_mask(left_padded, 0.0)).logits).all()
