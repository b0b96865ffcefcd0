import pytest
import torch

from conftest import make_tiny_llama
from diff_trainer.diffusion.attention import (
    additive_mask,
    annealed_attention_mask,
    annealing_ratio,
    document_ids,
    same_document_allowed,
)

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
        assert torch.allclose(
            model(ids, attention_mask=annealed_attention_mask(ones, 1.0)).logits, bidirectional, atol=1e-5
        )
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


EOS = 1


def test_document_ids_and_block_diagonal_mask_by_hand():
    ids = torch.tensor([[5, 6, EOS, 7, EOS, 8]])
    assert document_ids(ids, EOS).tolist() == [[0, 0, 0, 1, 1, 2]]  # EOS ends (and belongs to) its document
    allowed = same_document_allowed(ids, torch.tensor([[1, 1, 1, 1, 1, 0]]), [EOS, 99])
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert allowed.shape == (1, 1, 6, 6) and torch.equal(allowed[0, 0], expected)  # the padding key never
    mask = additive_mask(allowed, torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and (mask[allowed] == 0).all()
    assert (mask[~allowed] == torch.finfo(torch.bfloat16).min).all()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_isolated_token_logits_ignore_the_other_documents_of_the_row(implementation):
    model = make_tiny_llama(20, bidirectional=True, seed=5, attn_implementation=implementation)
    first = torch.tensor([[4, 5, 6, EOS, 7, 8, 9, 10, EOS, 11, 12]])
    second = first.clone()
    second[0, 4:8] = torch.tensor([13, 14, 15, 16])  # the middle document changes
    attention = torch.ones_like(first)

    def logits(ids, isolate):
        mask = additive_mask(same_document_allowed(ids, attention, EOS)) if isolate else attention
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    isolated_first, isolated_second = logits(first, True), logits(second, True)
    others = [0, 1, 2, 3, 9, 10]  # the first and the last document
    torch.testing.assert_close(isolated_first[0, others], isolated_second[0, others], rtol=0, atol=1e-6)
    assert not torch.allclose(isolated_first[0, 4:8], isolated_second[0, 4:8])
    # without isolation every token sees the changed document
    assert not torch.allclose(logits(first, False)[0, others], logits(second, False)[0, others], atol=1e-4)
    # the first document alone, unpacked, gives the same logits as inside the isolated row
    alone = model(input_ids=first[:, :4]).logits.detach()
    torch.testing.assert_close(isolated_first[0, :4], alone[0], rtol=1e-4, atol=1e-5)
