"""BatchNoiser, as DiffusionTrainer builds it from the flags: 1/t weights, prompt dropout, random lengths."""

import math

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama
from transformers import default_data_collator

from diff_trainer.arguments import DiffusionTrainingArguments
from diff_trainer.data.labels import IGNORE_INDEX
from diff_trainer.diffusion.schedules import get_schedule
from diff_trainer.modeling import write_diffusion_config
from diff_trainer.noising import BatchNoiser, seeded_generator
from diff_trainer.trainer import DiffusionTrainer

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
        labels[:pad + prompt] = IGNORE_INDEX
        features.append({"input_ids": ids.tolist(), "labels": labels.tolist(),
                         "attention_mask": [0] * pad + [1] * (prompt + response)})
    return features


def noiser_from_flags(tmp_path, **flags):
    """The training noiser that DiffusionTrainer builds from DiffusionTrainingArguments, and the mask id."""
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer))
    write_diffusion_config(model.config, mask_token_id=tokenizer.mask_token_id, shift_logits=False,
                           noise_schedule="linear", time_eps=EPS, dff_token="<DFF>")
    args = DiffusionTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", do_train=True,
                                      train_diff_model=True, loss_normalization="token", eval_mc_samples=0, **flags)
    return DiffusionTrainer(model, args).train_noiser, tokenizer.mask_token_id


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
