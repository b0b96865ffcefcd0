import pytest
import torch

from conftest import make_tiny_llama
from diff_trainer.diffusion.attention import additive_mask, document_ids
from diff_trainer.diffusion.block import (
    block_attention_allowed,
    block_causal_allowed,
    block_diffusion_loss,
    block_times,
    block_token_losses,
    check_block_size,
    mask_blocks,
    noise_blocks,
    predictor_positions,
    vectorised_inputs,
)
from diff_trainer.diffusion.losses import masked_diffusion_loss
from diff_trainer.diffusion.schedules import get_schedule
from diff_trainer.objectives.masked import BatchNoiser

VOCAB, MASK, EOS = 40, 39, 2


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(VOCAB, seed=3)


def clean_batch(batch_size=3, length=12, seed=0):
    """Random rows; row 0 has an unmaskable prompt of 3 tokens, row 1 ends in 2 padding positions."""
    ids = torch.randint(3, MASK, (batch_size, length), generator=gen(seed))
    labels, attention = ids.clone(), torch.ones_like(ids)
    labels[0, :3] = -100
    labels[1, -2:], attention[1, -2:] = -100, 0
    return ids, labels, attention


def vectorised_logits(model, noisy, clean, block_size, attention=None, documents=None):
    ids, positions = vectorised_inputs(noisy, clean)
    allowed = block_attention_allowed(clean.shape[1], block_size, document_ids=documents, attention_mask=attention)
    return model(input_ids=ids, position_ids=positions, attention_mask=additive_mask(allowed)).logits


def loop_logits(model, noisy, clean, block_size, attention, shift, documents=None):
    """Reference: block b run alone after its clean prefix, [x0^{<b} ; x_t^b], with a block-causal mask; returns the
    logits that predict every token (shift: at i - 1 of that sequence), [B, L, V] (position 0 of a shift model: 0)."""
    batch_size, length = clean.shape
    predicting = torch.zeros(batch_size, length, VOCAB)
    for start in range(0, length, block_size):
        end = start + block_size
        ids = torch.cat([clean[:, :start], noisy[:, start:end]], dim=1)
        index = torch.arange(end)
        allowed = (index[None, :] // block_size <= index[:, None] // block_size)[None, None]
        allowed = allowed & attention[:, :end].bool()[:, None, None, :]
        if documents is not None:
            allowed = allowed & (documents[:, :end, None] == documents[:, None, :end])[:, None]
        logits = model(input_ids=ids, attention_mask=additive_mask(allowed)).logits
        if shift:
            first = max(start, 1)
            predicting[:, first:end] = logits[:, first - 1 : end - 1]
        else:
            predicting[:, start:end] = logits[:, start:end]
    return predicting


def test_block_size_must_divide_the_row():
    assert check_block_size(12, 4) == 3
    for bad in (0, 5, 13):
        with pytest.raises(ValueError, match="divisor of the row length 12"):
            check_block_size(12, bad)


def test_block_times_are_stratified_over_every_block_of_the_batch():
    t = block_times(2, 3, generator=gen(0))
    torch.testing.assert_close(
        t, torch.tensor([[0.496257, 0.662923, 0.829590], [0.996257, 0.162923, 0.329590]]), atol=1e-6, rtol=0
    )
    ordered = t.reshape(-1).sort().values  # one stratum of width 1/6 per block: equally spaced, all distinct
    torch.testing.assert_close(ordered.diff(), torch.full((5,), 1 / 6))
    for batch_size, num_blocks in ((1, 4), (4, 1), (3, 5)):
        t = block_times(batch_size, num_blocks, generator=gen(batch_size))
        assert t.shape == (batch_size, num_blocks) and t.reshape(-1).unique().numel() == batch_size * num_blocks
    clipped = block_times(8, 16, low=0.3, high=0.8, generator=gen(1))
    assert clipped.min() >= 0.3 and clipped.max() < 0.8
    torch.testing.assert_close(clipped.reshape(-1).sort().values.diff(), torch.full((127,), 0.5 / 128))
    with pytest.raises(ValueError, match="clipped time range"):
        block_times(2, 2, low=0.9, high=0.1)


def test_iid_block_times_are_uniform_and_independent():
    t = block_times(4000, 4, antithetic=False, generator=gen(2))
    assert abs(t.mean().item() - 0.5) < 4 * (1 / 12 / t.numel()) ** 0.5
    correlation = torch.corrcoef(t.T)[0, 1].item()  # blocks of one row draw independently
    assert abs(correlation) < 4 / 4000**0.5


def test_each_block_is_masked_with_its_own_probability():
    ids = torch.arange(24).reshape(2, 12)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[1, 4] = False
    mask_prob = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    noisy, masked = mask_blocks(ids, maskable, mask_prob, 3, MASK, gen(0))
    expected = mask_prob.repeat_interleave(3, dim=1).bool() & maskable
    assert torch.equal(masked, expected) and torch.equal(noisy, torch.where(expected, MASK, ids))
    draws = 5000
    rates = torch.tensor([[0.1, 0.9, 0.5]]).repeat(draws, 1)
    _, masked = mask_blocks(
        torch.zeros(draws, 6, dtype=torch.long), torch.ones(draws, 6, dtype=torch.bool), rates, 2, MASK, gen(1)
    )
    observed = masked.float().mean(0).reshape(3, 2)
    for p, block in zip((0.1, 0.9, 0.5), observed):
        assert ((block - p).abs() < 4 * (p * (1 - p) / draws) ** 0.5).all(), (p, block)


def test_noised_batch_masks_only_labelled_positions_and_weights_each_block():
    ids, labels, _ = clean_batch(batch_size=64)
    schedule = get_schedule("cosine")
    batch = noise_blocks(ids, labels, schedule, 4, MASK, generator=gen(3))
    assert not (batch["masked"] & (labels == -100)).any()
    assert torch.equal(batch["noisy_ids"], torch.where(batch["masked"], MASK, ids))
    times = block_times(64, 3, generator=gen(3))  # the same first draws
    torch.testing.assert_close(batch["loss_weight"], schedule.loss_weight(times))


def test_one_block_is_the_masked_diffusion_draw():
    ids, labels, attention = clean_batch()
    noiser = BatchNoiser(mask_token_id=MASK, schedule=get_schedule("linear"))
    expected = noiser({"input_ids": ids, "labels": labels, "attention_mask": attention}, gen(4))
    batch = noise_blocks(ids, labels, get_schedule("linear"), 12, MASK, generator=gen(4))
    assert torch.equal(batch["noisy_ids"], expected["input_ids"]) and torch.equal(batch["masked"], expected["masked"])
    torch.testing.assert_close(batch["loss_weight"][:, 0], expected["loss_weight"], rtol=0, atol=0)


def test_complementary_masks_cover_every_maskable_token_once():
    ids, labels, _ = clean_batch(batch_size=4)
    schedule = get_schedule("linear")
    batch = noise_blocks(ids, labels, schedule, 3, MASK, complementary=True, generator=gen(5))
    first, second = batch["masked"].chunk(2)
    maskable = labels != -100
    assert torch.equal(first ^ second, maskable) and not (first & second).any()
    assert torch.equal(batch["clean_ids"], ids.repeat(2, 1)) and torch.equal(batch["maskable"], maskable.repeat(2, 1))
    assert torch.equal(batch["noisy_ids"], torch.where(batch["masked"], MASK, batch["clean_ids"]))
    p = schedule.mask_prob(block_times(4, 4, generator=gen(5)))
    torch.testing.assert_close(batch["loss_weight"], torch.cat([1 / p, 1 / (1 - p)]))
    with pytest.raises(ValueError, match="linear schedule"):
        noise_blocks(ids, labels, get_schedule("cosine"), 3, MASK, complementary=True)


def test_attention_table_of_the_vectorised_pass():
    allowed = block_attention_allowed(4, 2)[0, 0].int()
    # rows: queries x_t positions 0-3 then x0 positions 0-3; columns: the same keys
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
        ]
    )
    assert torch.equal(allowed, expected)
    # one-token blocks: the noisy token sees itself and the clean tokens before it; the clean half is causal
    allowed = block_attention_allowed(3, 1)[0, 0]
    assert torch.equal(allowed[:3, 3:], torch.ones(3, 3, dtype=torch.bool).tril(-1))
    assert torch.equal(allowed[3:, 3:], torch.ones(3, 3, dtype=torch.bool).tril())


def test_attention_isolates_documents_and_hides_padding():
    ids = torch.tensor([[5, EOS, 6, 7, EOS, 8, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    documents = document_ids(ids, [EOS])
    allowed = block_attention_allowed(8, 4, document_ids=documents, attention_mask=attention)[0, 0]
    plain = block_attention_allowed(8, 4)[0, 0]
    both = documents.repeat(1, 2)[0]
    real = attention.repeat(1, 2)[0].bool()
    assert torch.equal(allowed, plain & (both[:, None] == both[None, :]) & real[None, :])
    assert not allowed[2, 1] and not allowed[5 + 8, 3 + 8] and allowed[3, 2] and not allowed[:, 6].any()


def test_block_causal_mask_follows_positions_and_padding():
    positions = torch.tensor([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    allowed = block_causal_allowed(positions, 2, attention)[:, 0]
    assert torch.equal(
        allowed[1].int(), torch.tensor([[1, 1, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 1, 0, 0]] * 2 + [[1, 1, 1, 1, 1, 1]] * 2)
    )
    assert torch.equal(allowed[0, 2:, 2:], allowed[1, :4, :4]) and not allowed[0, :, :2].any()


def test_predictor_positions_at_block_boundaries():
    assert predictor_positions(6, 3, shift=False).tolist() == [0, 1, 2, 3, 4, 5]
    # token 3 starts block 1: predicted by the clean copy of token 2 (index 6 + 2)
    assert predictor_positions(6, 3, shift=True).tolist() == [-1, 0, 1, 8, 3, 4]
    assert predictor_positions(4, 1, shift=True).tolist() == [-1, 4, 5, 6]


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("block_size", [1, 3, 4, 12])
def test_vectorised_pass_equals_a_loop_over_blocks(model, block_size, shift):
    ids, labels, attention = clean_batch()
    batch = noise_blocks(ids, labels, get_schedule("linear"), block_size, MASK, generator=gen(block_size))
    logits = vectorised_logits(model, batch["noisy_ids"], ids, block_size, attention)
    expected = loop_logits(model, batch["noisy_ids"], ids, block_size, attention, shift)
    source = predictor_positions(12, block_size, shift)
    scored = (labels != -100) & (source >= 0)
    torch.testing.assert_close(logits[:, source.clamp(min=0)][scored], expected[scored], atol=1e-5, rtol=1e-5)
    for kind in ("llada_pretrain", "llada_sft", "masked", "token"):
        loss = block_diffusion_loss(
            logits, ids, batch["masked"], batch["maskable"], batch["loss_weight"], block_size, kind, shift=shift
        )
        reference = loss_of_predictions(expected, ids, batch, block_size, kind, shift)
        torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
        assert loss > 0


def loss_of_predictions(predicting, ids, batch, block_size, kind, shift):
    """The loss written out token by token from logits that predict each token."""
    masked, maskable, weight = batch["masked"], batch["maskable"], batch["loss_weight"]
    total = torch.zeros(())
    for row in range(ids.shape[0]):
        row_total = torch.zeros(())
        for i in range(ids.shape[1]):
            if masked[row, i] and not (shift and i == 0):
                ce = -torch.log_softmax(predicting[row, i], -1)[ids[row, i]]
                row_total = row_total + weight[row, i // block_size] * ce
        total = total + (row_total / maskable[row].sum() if kind == "llada_sft" else row_total)
    count = {
        "llada_pretrain": ids.numel(),
        "llada_sft": ids.shape[0],
        "masked": masked.sum().item(),
        "token": maskable.sum().item(),
    }[kind]
    return total / count


def test_vectorised_pass_with_documents_equals_a_loop_over_blocks(model):
    ids, labels, attention = clean_batch(seed=6)
    ids[:, [2, 7]] = EOS
    documents = document_ids(ids, [EOS])
    batch = noise_blocks(ids, labels, get_schedule("linear"), 4, MASK, generator=gen(6))
    logits = vectorised_logits(model, batch["noisy_ids"], ids, 4, attention, documents)
    expected = loop_logits(model, batch["noisy_ids"], ids, 4, attention, False, documents)
    assert not torch.allclose(loop_logits(model, batch["noisy_ids"], ids, 4, attention, False)[:, 3:], expected[:, 3:])
    real = attention.bool()
    torch.testing.assert_close(logits[:, :12][real], expected[real], atol=1e-5, rtol=1e-5)


def test_float_mask_gives_the_same_logits_under_eager_and_sdpa():
    ids, labels, attention = clean_batch()
    batch = noise_blocks(ids, labels, get_schedule("linear"), 4, MASK, generator=gen(7))
    results = []
    for implementation in ("sdpa", "eager"):
        net = make_tiny_llama(VOCAB, seed=3, attn_implementation=implementation)
        results.append(vectorised_logits(net, batch["noisy_ids"], ids, 4, attention)[:, :12][attention.bool()])
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift", [False, True])
def test_one_block_equals_the_masked_diffusion_loss_of_the_same_draw(model, shift):
    ids, labels, attention = clean_batch()
    noiser = BatchNoiser(mask_token_id=MASK, schedule=get_schedule("linear"))
    draw = noiser({"input_ids": ids, "labels": labels, "attention_mask": attention}, gen(8))
    diffusion_logits = model(input_ids=draw["input_ids"], attention_mask=attention).logits
    batch = noise_blocks(ids, labels, get_schedule("linear"), 12, MASK, generator=gen(8))
    logits = vectorised_logits(model, batch["noisy_ids"], ids, 12, attention)
    for kind in ("llada_pretrain", "llada_sft", "masked", "token"):
        expected = masked_diffusion_loss(
            diffusion_logits, ids, draw["masked"], draw["maskable"], draw["loss_weight"], kind, shift=shift
        )
        loss = block_diffusion_loss(
            logits, ids, batch["masked"], batch["maskable"], batch["loss_weight"], 12, kind, shift=shift
        )
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_one_token_blocks_predict_each_masked_token_causally(model):
    causal = make_tiny_llama(VOCAB, bidirectional=False, seed=3)
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, causal.state_dict()[name])
    ids, labels, attention = clean_batch(batch_size=2)
    attention[:], labels[:] = 1, ids  # every position maskable
    batch = noise_blocks(ids, labels, get_schedule("linear"), 1, MASK, generator=gen(9))
    logits = vectorised_logits(model, batch["noisy_ids"], ids, 1)
    assert batch["masked"].any() and (~batch["masked"]).any()
    for row, i in batch["masked"].nonzero().tolist():
        prefix = torch.cat([ids[row, :i], torch.tensor([MASK])])[None]
        expected = causal(input_ids=prefix).logits[0, -1]
        torch.testing.assert_close(logits[row, i], expected, atol=1e-5, rtol=1e-5)
    # shift: token i is predicted by the causal LM from x0_<i, whatever the mask
    shifted = predictor_positions(12, 1, shift=True)
    next_token = causal(input_ids=ids).logits
    torch.testing.assert_close(logits[:, shifted[1:]], next_token[:, :-1], atol=1e-5, rtol=1e-5)


def test_one_token_blocks_average_to_the_causal_nll(model):
    """Linear schedule: each token is masked with probability p and weighted 1/p, so the expected loss is the NLL."""
    causal = make_tiny_llama(VOCAB, bidirectional=False, seed=3)
    ids = torch.randint(3, MASK, (1, 12), generator=gen(10))
    labels = ids.clone()
    labels[0, 0] = -100  # a shift model never scores position 0: drop it from the average
    copies = 512
    batch = noise_blocks(
        ids.repeat(copies, 1), labels.repeat(copies, 1), get_schedule("linear"), 1, MASK, generator=gen(11)
    )
    logits = vectorised_logits(model, batch["noisy_ids"], batch["clean_ids"], 1)
    loss = block_diffusion_loss(
        logits, batch["clean_ids"], batch["masked"], batch["maskable"], batch["loss_weight"], 1, "token", shift=True
    )
    per_token = block_token_losses(logits, batch["clean_ids"], batch["masked"], 1, shift=True)
    per_copy = (per_token * batch["loss_weight"]).sum(1) / 11  # each copy alone: an unbiased estimate
    torch.testing.assert_close(per_copy.mean(), loss)
    nll = causal(input_ids=ids, labels=ids).loss  # HF's shifted mean over the 11 predicted tokens
    standard_error = per_copy.std() / copies**0.5
    assert (loss - nll).abs() < 4 * standard_error, (loss, nll, standard_error)
    assert standard_error < 0.05 * nll
