import torch

from diff_trainer.diffusion.forward import (
    mask_exact_count,
    mask_tokens,
    replace_prompt_with_mask,
    sample_times,
    stratified_mask_counts,
    truncate_random_length,
)

MASK = 99


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_antithetic_times_are_equally_spaced():
    for batch_size in (1, 2, 7, 64):
        t = sample_times(batch_size, generator=gen(batch_size))
        assert t.shape == (batch_size,)
        assert ((t >= 0) & (t < 1)).all()
        ordered = t.sort().values
        # consecutive gaps are 1/B, and the wrap-around gap closes the circle
        assert torch.allclose(ordered.diff(), torch.full((batch_size - 1,), 1 / batch_size), atol=1e-6)
        assert abs(ordered[0] + 1 - ordered[-1] - 1 / batch_size) < 1e-6


def test_iid_times_are_uniform():
    t = sample_times(20000, antithetic=False, generator=gen())
    assert ((t >= 0) & (t < 1)).all()
    assert abs(t.mean().item() - 0.5) < 4 * (1 / 12 / 20000) ** 0.5
    assert not torch.allclose(t.sort().values.diff(), torch.full((19999,), 1 / 20000))


def test_mask_tokens_never_masks_non_maskable():
    g = gen(1)
    for _ in range(50):
        ids = torch.randint(0, 50, (4, 9), generator=g)
        maskable = torch.rand(4, 9, generator=g) < 0.5
        prob = torch.rand(4, generator=g)
        noisy, masked = mask_tokens(ids, maskable, prob, MASK, generator=g)
        assert not (masked & ~maskable).any()
        assert torch.equal(noisy[~masked], ids[~masked])
        assert (noisy[masked] == MASK).all()


def test_mask_tokens_rate_matches_probability():
    draws, length = 20000, 3
    prob = torch.tensor([0.1, 0.5, 0.9]).repeat_interleave(draws)
    ids = torch.zeros(3 * draws, length, dtype=torch.long)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    _, masked = mask_tokens(ids, maskable, prob, MASK, generator=gen(2))
    rates = masked.float().reshape(3, draws, length).mean(dim=1)  # per (probability, position)
    for p, row in zip((0.1, 0.5, 0.9), rates):
        sigma = (p * (1 - p) / draws) ** 0.5
        assert ((row - p).abs() < 4 * sigma).all(), (p, row)


def test_mask_exact_count_masks_exactly_and_only_maskable():
    g = gen(3)
    for _ in range(50):
        ids = torch.randint(0, 50, (5, 11), generator=g)
        maskable = torch.rand(5, 11, generator=g) < 0.6
        counts = torch.randint(0, 14, (5,), generator=g)
        noisy, masked = mask_exact_count(ids, maskable, counts, MASK, generator=g)
        assert torch.equal(masked.sum(1), torch.minimum(counts, maskable.sum(1)))  # clipped to number maskable
        assert not (masked & ~maskable).any()
        assert torch.equal(noisy, torch.where(masked, MASK, ids))


def test_mask_exact_count_is_uniform_over_positions():
    draws = 10000
    maskable = torch.tensor([[False, True, True, False, True, True, True]]).repeat(draws, 1)
    ids = torch.zeros_like(maskable, dtype=torch.long)
    _, masked = mask_exact_count(ids, maskable, torch.full((draws,), 2), MASK, generator=gen(4))
    observed = masked.sum(0)[maskable[0]].float()
    expected = draws * 2 / 5
    chi_square = ((observed - expected) ** 2 / expected).sum().item()
    assert chi_square < 25  # 4 degrees of freedom: P(chi2 > 25) ≈ 5e-5
    assert masked.sum(0)[~maskable[0]].sum() == 0


def test_stratified_counts_range_and_spread():
    lengths = torch.tensor([1, 3, 5, 128, 0])
    counts = stratified_mask_counts(lengths, 8, generator=gen(5))
    assert counts.shape == (8, 5)
    assert (counts[:, :4] >= 1).all() and (counts[:, :4] <= lengths[:4]).all()
    assert (counts[:, 4] == 0).all()
    assert (counts[:, 0] == 1).all()
    # 8 samples of L=128 are 16 apart on the circle of counts
    assert torch.equal(counts[:, 3].sort().values.diff(), torch.full((7,), 16))
    # as many samples as tokens: every count 1..L exactly once
    assert torch.equal(stratified_mask_counts(5, 5, generator=gen(6))[:, 0].sort().values, torch.arange(1, 6))


def test_stratified_counts_are_marginally_uniform():
    draws = torch.cat([stratified_mask_counts(torch.tensor([4]), 3, generator=gen(seed)) for seed in range(4000)])
    frequencies = torch.bincount(draws.reshape(-1), minlength=5)[1:].float() / draws.numel()
    assert (frequencies - 0.25).abs().max() < 0.02


def test_truncate_random_length_masks_a_tail():
    labels = torch.arange(1, 4001).reshape(500, 8)
    attention = torch.ones(500, 8, dtype=torch.long)
    new_labels, new_attention = truncate_random_length(labels, attention, 0.3, generator=gen(7))
    assert new_labels.shape == labels.shape and new_attention.shape == attention.shape
    kept = new_attention.sum(1)
    truncated = kept < 8
    # a prefix survives unchanged, everything after it is ignored
    positions = torch.arange(8).expand(500, 8)
    tail = positions >= kept.unsqueeze(1)
    assert torch.equal(new_labels[~tail], labels[~tail]) and (new_labels[tail] == -100).all()
    assert (new_attention[tail] == 0).all() and (kept >= 1).all()
    # roughly 30% of rows, minus the 1/8 that draw the full length
    assert abs(truncated.float().mean().item() - 0.3 * 7 / 8) < 0.08
    assert torch.equal(labels, torch.arange(1, 4001).reshape(500, 8))  # inputs untouched


def test_truncate_with_zero_probability_changes_nothing():
    labels = torch.randint(0, 9, (4, 6))
    attention = torch.ones(4, 6, dtype=torch.long)
    new_labels, new_attention = truncate_random_length(labels, attention, 0.0, generator=gen(8))
    assert torch.equal(new_labels, labels) and torch.equal(new_attention, attention)


def test_replace_prompt_with_mask_drops_whole_prompts():
    ids = torch.arange(1, 1 + 400 * 5).reshape(400, 5)
    prompt = torch.tensor([True, True, False, False, False]).repeat(400, 1)
    new_ids, dropped = replace_prompt_with_mask(ids, prompt, MASK, 0.25, generator=gen(9))
    assert (new_ids[dropped][:, :2] == MASK).all()
    assert torch.equal(new_ids[dropped][:, 2:], ids[dropped][:, 2:])
    assert torch.equal(new_ids[~dropped], ids[~dropped])
    assert abs(dropped.float().mean().item() - 0.25) < 4 * (0.25 * 0.75 / 400) ** 0.5
