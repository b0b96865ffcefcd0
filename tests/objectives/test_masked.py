"""BatchNoiser, as DiffusionTrainer builds it from the flags: 1/t weights, prompt dropout, random lengths."""

import math

import pytest
import torch
from transformers import default_data_collator

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.data.labels import IGNORE_INDEX
from diff_trainer.diffusion.schedules import get_schedule
from diff_trainer.diffusion_config import write_diffusion_config
from diff_trainer.objectives.masked import BatchNoiser, seeded_generator
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
from diff_trainer.training.trainer import DiffusionTrainer

MASK = 7
EPS = 1e-3


def rows(count, prompt=3, response=5, pad=2, seed=0):
    """Left-padded rows: `pad` ignored pads (attention 0), a prompt (label -100) and a trained response."""
    generator = torch.Generator().manual_seed(seed)
    features = []
    for _ in range(count):
        ids = torch.randint(10, 200, (pad + prompt + response,), generator=generator)
        ids[:pad] = 1
        labels = ids.clone()
        labels[: pad + prompt] = IGNORE_INDEX
        features.append(
            {
                "input_ids": ids.tolist(),
                "labels": labels.tolist(),
                "attention_mask": [0] * pad + [1] * (prompt + response),
            }
        )
    return features


def trainer_from_flags(tmp_path, tokenizer=None, train_dataset=None, **flags):
    """The DiffusionTrainer that run_clm_diff.py builds from DiffusionTrainingArguments (byte tokenizer)."""
    tokenizer = tokenizer or make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer))
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=EPS,
        dff_token="<DFF>",
    )
    args = DiffusionTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        do_train=True,
        train_diff_model=True,
        loss_normalization="token",
        eval_mc_samples=0,
        **flags,
    )
    return DiffusionTrainer(model, args, processing_class=tokenizer, train_dataset=train_dataset)


def noiser_from_flags(tmp_path, tokenizer=None, **flags):
    """The training noiser that DiffusionTrainer builds from DiffusionTrainingArguments, and the mask id."""
    trainer = trainer_from_flags(tmp_path, tokenizer, **flags)
    return trainer.train_noiser, trainer.processing_class.mask_token_id


def noise(noiser, features, seed):
    return noiser(default_data_collator(features), seeded_generator(seed))


def test_linear_weight_is_the_inverse_of_the_masking_rate(tmp_path):
    # 4096 trainable tokens per row: the masked share estimates p_mask to ±0.008 (one std)
    noiser, _ = noiser_from_flags(tmp_path, noise_schedule="linear", time_eps=EPS, antithetic_time=True)
    batch = noise(noiser, rows(8, prompt=0, response=4096, pad=0), seed=0)
    masked_share = batch["masked"].float().mean(dim=1)
    assert torch.allclose(1.0 / batch["loss_weight"], masked_share, atol=0.035)
    # antithetic times: t_i = (u + i/B) mod 1, recovered from w_i = 1 / ((1-ε) t_i + ε)
    times = (1.0 / batch["loss_weight"].double() - EPS) / (1 - EPS)
    offsets = ((times - times[0]) % 1.0) * 8
    assert torch.allclose(offsets, torch.arange(8, dtype=torch.float64), atol=1e-4)


def test_masks_touch_only_trainable_tokens_and_the_clean_ids_are_kept():
    features = rows(64)
    batch = noise(BatchNoiser(MASK, get_schedule("linear", EPS)), features, seed=1)
    clean = torch.tensor([f["input_ids"] for f in features])
    trainable = torch.tensor([f["labels"] for f in features]) != IGNORE_INDEX
    masked = batch["input_ids"] == MASK
    assert torch.equal(batch["maskable"], trainable)
    assert not (masked & ~trainable).any() and masked.any()
    assert torch.equal(batch["masked"], masked) and torch.equal(batch["clean_ids"], clean)
    assert torch.equal(batch["input_ids"][~masked], clean[~masked])


def test_prompt_dropout_masks_whole_prompts_and_never_the_padding(tmp_path):
    noiser, mask = noiser_from_flags(tmp_path, prompt_dropout=0.25)
    features = rows(2000, seed=2)
    batch = noise(noiser, features, seed=2)
    clean = torch.tensor([f["input_ids"] for f in features])
    prompt = batch["input_ids"][:, 2:5]
    dropped = (prompt == mask).all(dim=1)
    assert torch.equal(dropped, (prompt == mask).any(dim=1))  # a prompt is masked whole or not at all
    assert torch.equal(prompt[~dropped], clean[~dropped, 2:5])
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.04)  # 4.6 std
    assert torch.equal(batch["input_ids"][:, :2], clean[:, :2])  # padding untouched
    # the response is noised as without dropout, and prompts are never prediction targets
    assert torch.equal(batch["input_ids"][:, 5:] == mask, batch["masked"][:, 5:])
    assert not batch["masked"][:, :5].any() and not batch["maskable"][:, :5].any()


def test_random_length_truncates_the_chosen_share_to_a_uniform_prefix(tmp_path):
    noiser, mask = noiser_from_flags(tmp_path, random_length_prob=0.3)
    features = rows(3000, prompt=0, response=10, pad=0, seed=3)
    batch = noise(noiser, features, seed=3)
    kept = batch["attention_mask"].sum(dim=1)
    truncated = kept < 10
    # P(truncated) = 0.3 · P(kept < L) = 0.3 · 9/10
    assert truncated.float().mean().item() == pytest.approx(0.27, abs=0.035)
    for row in range(3000):
        length = int(kept[row])
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert not batch["maskable"][row, length:].any() and batch["maskable"][row, :length].all()
    assert not (batch["input_ids"][kept[:, None] <= torch.arange(10)] == mask).any()  # the tail is never masked
    # kept length of a truncated row is U{1..10}, so among the shortened ones U{1..9}: mean 5
    assert kept[truncated].float().mean().item() == pytest.approx(5.0, abs=0.3)
    assert math.isclose(batch["maskable"].sum().item(), kept.sum().item())


# --------------------------------------------------------------------------------------------------
# --prefix_shuffle: prefix units permuted at each draw, everything else as given

SEPARATOR = "<SEP>"


def keyword_rows(tokenizer, texts, block_size, packed):
    """Rows of `prompt <DFF> response` texts as run_clm_diff.py builds them: packed, or left-padded."""
    from diff_trainer.data.labels import dff_labels
    from diff_trainer.data.packing import concatenate_and_chunk, pad_to_block

    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    labels, _ = dff_labels(ids, tokenizer.convert_tokens_to_ids(["<DFF>"]))
    pack = concatenate_and_chunk if packed else pad_to_block
    rows = pack(ids, labels, block_size, tokenizer.eos_token_id)
    return {key: torch.as_tensor(value) for key, value in rows.items()}


def segments_of(text):
    """Second implementation on strings: the stripped keywords of a `k1 <SEP> k2 ... ` prefix and its skeleton."""
    parts = text.split(SEPARATOR)
    skeleton = [(part[: len(part) - len(part.lstrip())], part[len(part.rstrip()) :]) for part in parts]
    return [part.strip() for part in parts], skeleton


def shuffled_batch(tmp_path, texts, packed, seed, **flags):
    tokenizer = make_byte_tokenizer()
    batch = keyword_rows(tokenizer, texts * 2 if packed else texts, 64, packed)
    noiser, _ = noiser_from_flags(tmp_path, tokenizer=tokenizer, **flags)
    return tokenizer, batch, noiser(batch, seeded_generator(seed))


KEYWORD_TEXTS = [
    "alpha <SEP> be <SEP> gamma delta <SEP> é <DFF> x y",
    "one <SEP>  two <SEP>three <DFF> z",
    "<DFF> no prefix at all",
    "solo <DFF> kept",
]


@pytest.mark.parametrize("packed", [False, True])
def test_prefix_segments_are_permuted_and_nothing_else_moves(tmp_path, packed):
    seen = set()
    for seed in range(12):
        tokenizer, batch, noised = shuffled_batch(tmp_path, KEYWORD_TEXTS, packed, seed, prefix_shuffle="segments")
        clean, labels, attention = noised["clean_ids"], batch["labels"], batch["attention_mask"]
        prefix = (labels == IGNORE_INDEX) & attention.bool()
        assert torch.equal(clean[~prefix], batch["input_ids"][~prefix])  # targets, <DFF>, EOS and padding as given
        assert torch.equal(noised["maskable"], labels != IGNORE_INDEX)  # labels untouched
        assert not noised["input_ids"][prefix].eq(tokenizer.mask_token_id).any()  # the prefix is never masked
        for row in range(len(clean)):
            positions = prefix[row].nonzero().flatten()
            # each run of prefix positions is one document's prefix (packed rows may hold several)
            runs = torch.tensor_split(positions, (positions.diff() > 1).nonzero().flatten() + 1)
            for run in runs:
                before = tokenizer.decode(batch["input_ids"][row, run])
                after = tokenizer.decode(clean[row, run])
                assert sorted(clean[row, run].tolist()) == sorted(batch["input_ids"][row, run].tolist())
                words_before, skeleton_before = segments_of(before)
                words_after, skeleton_after = segments_of(after)
                assert skeleton_after == skeleton_before  # separators and blanks keep their places
                assert sorted(words_after) == sorted(words_before)
                if len(words_before) == 4:
                    seen.add(tuple(words_after))
    assert len(seen) >= 8  # 12 draws of the 4-keyword prefix: most of the 24 orders, not one fixed order


def test_prefix_shuffle_is_seeded_per_draw(tmp_path):
    texts = KEYWORD_TEXTS * 2
    _, _, first = shuffled_batch(tmp_path, texts, True, 3, prefix_shuffle="segments")
    _, _, again = shuffled_batch(tmp_path, texts, True, 3, prefix_shuffle="segments")
    _, _, other = shuffled_batch(tmp_path, texts, True, 4, prefix_shuffle="segments")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["clean_ids"], other["clean_ids"])


def test_prefix_tokens_unit_permutes_single_tokens_around_fixed_specials(tmp_path):
    tokenizer = make_byte_tokenizer()
    eos = tokenizer.eos_token_id
    texts = ["abcdefgh <DFF> t"]
    batch = keyword_rows(tokenizer, texts, 16, packed=False)
    batch["input_ids"][0, 3] = eos  # a special token inside the prefix stays where it is
    noiser, _ = noiser_from_flags(tmp_path, tokenizer=tokenizer, prefix_shuffle="tokens")
    orders = set()
    for seed in range(5):
        clean = noiser(batch, seeded_generator(seed))["clean_ids"][0]
        prefix = (batch["labels"][0] == IGNORE_INDEX) & batch["attention_mask"][0].bool()
        assert clean[3] == eos and torch.equal(clean[~prefix], batch["input_ids"][0][~prefix])
        assert sorted(clean[prefix].tolist()) == sorted(batch["input_ids"][0][prefix].tolist())
        orders.add(tuple(clean[prefix].tolist()))
    assert len(orders) == 5


def test_prefix_shuffle_is_off_for_evaluation_unless_asked(tmp_path):
    tokenizer = make_byte_tokenizer()
    for flags, in_eval in (({}, False), ({"eval_prefix_shuffle": True}, True)):
        trainer = trainer_from_flags(tmp_path, tokenizer, prefix_shuffle="segments", **flags)
        assert trainer.train_noiser.prefix_shuffler.unit == "segments"
        assert (trainer.eval_noiser.prefix_shuffler is not None) == in_eval
        assert trainer.eval_prefix_shuffler is trainer.eval_noiser.prefix_shuffler  # the ELBO's rows alike


def test_prefix_shuffle_bad_settings(tmp_path):
    from datasets import Dataset

    tokenizer = make_byte_tokenizer()
    rows = keyword_rows(tokenizer, ["a , b <DFF> c"], 16, packed=False)
    data = Dataset.from_dict({key: value.tolist() for key, value in rows.items()})
    with pytest.raises(ValueError, match="contains --prefix_separator '<SEP>'"):
        trainer_from_flags(tmp_path, tokenizer, train_dataset=data, prefix_shuffle="segments")
    assert trainer_from_flags(
        tmp_path, tokenizer, train_dataset=data, prefix_shuffle="segments", prefix_separator=","
    ).train_noiser.prefix_shuffler.separator_ids == (44 + 3,)
    for flags, message in (
        ({"prefix_shuffle": "words"}, "must be one of"),
        ({"eval_prefix_shuffle": True}, "needs --prefix_shuffle"),
        ({"prefix_shuffle": "tokens", "train_diff_model": False}, "only apply with"),
    ):
        with pytest.raises(ValueError, match=message):
            DiffusionTrainingArguments(
                output_dir=str(tmp_path), use_cpu=True, report_to="none", **{"train_diff_model": True, **flags}
            )
