"""DiffusionTrainer: loss normalisation over accumulation, empty batches, seeded evaluation, ELBO, wiring errors."""

import logging

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama
from datasets import Dataset
from transformers import default_data_collator

from diff_trainer.arguments import DiffusionTrainingArguments
from diff_trainer.data.labels import IGNORE_INDEX
from diff_trainer.data.pipeline import RowLayout
from diff_trainer.diffusion.losses import LOSS_NORMALIZATIONS
from diff_trainer.modeling import write_diffusion_config
from diff_trainer.noising import seeded_generator
from diff_trainer.trainer import DiffusionTrainer, default_normalization

BLOCK = 16


def make_rows(tokenizer, count=8, seed=0):
    """Left-padded prompt/response rows: prompt labels -100, response trained, padding ignored."""
    generator = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "labels": [], "attention_mask": []}
    for _ in range(count):
        prompt_len, answer_len = torch.randint(2, 5, (2,), generator=generator).tolist()
        pad = BLOCK - prompt_len - answer_len
        ids = [tokenizer.eos_token_id] * pad + torch.randint(10, 200, (prompt_len + answer_len,),
                                                             generator=generator).tolist()
        rows["input_ids"].append(ids)
        rows["labels"].append([IGNORE_INDEX] * (pad + prompt_len) + ids[pad + prompt_len:])
        rows["attention_mask"].append([0] * pad + [1] * (prompt_len + answer_len))
    return Dataset.from_dict(rows)


def layout(packing):
    return RowLayout(packing, BLOCK, "<DFF>", "byte", 386, "0")


def diffusion_llama(tokenizer):
    model = make_tiny_llama(len(tokenizer))
    write_diffusion_config(model.config, mask_token_id=tokenizer.mask_token_id, shift_logits=False,
                           noise_schedule="linear", time_eps=1e-3, dff_token="<DFF>")
    return model


def make_trainer(tmp_path, normalization="llada_sft", **diffusion):
    tokenizer = make_byte_tokenizer()
    args = DiffusionTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4,
        per_device_eval_batch_size=4, max_steps=1, learning_rate=1e-2, do_train=True, train_diff_model=True,
        loss_normalization=normalization, eval_mc_samples=4, **diffusion)
    return DiffusionTrainer(diffusion_llama(tokenizer), args, row_layout=layout("left"),
                            train_dataset=make_rows(tokenizer), eval_dataset=make_rows(tokenizer, 4, 1),
                            processing_class=tokenizer)


def noised_batch(trainer, rows, seed=3):
    clean = default_data_collator([trainer.train_dataset[i] for i in rows])
    return trainer.train_noiser(clean, seeded_generator(seed))


def gradients(model):
    return torch.cat([p.grad.reshape(-1).clone() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("normalization", LOSS_NORMALIZATIONS)
def test_accumulating_two_halves_gives_the_gradient_of_the_whole_batch(tmp_path, normalization):
    trainer = make_trainer(tmp_path, normalization)
    whole = noised_batch(trainer, range(8))
    halves = [{k: v[:4] for k, v in whole.items()}, {k: v[4:] for k, v in whole.items()}]
    model = trainer.model.train()

    model.zero_grad()
    trainer.compute_loss(model, whole, num_items_in_batch=trainer._get_num_items_in_batch([whole], "cpu")).backward()
    one_batch = gradients(model)

    model.zero_grad()
    total = trainer._get_num_items_in_batch(halves, "cpu")
    for half in halves:
        trainer.compute_loss(model, half, num_items_in_batch=total).backward()
    assert torch.allclose(gradients(model), one_batch, atol=1e-6)


def test_loss_of_one_batch_matches_hand_normalisation(tmp_path):
    trainer = make_trainer(tmp_path, "token")
    batch = noised_batch(trainer, range(4))
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = trainer.compute_loss(trainer.model, batch)
    masked = batch["masked"]
    ce = torch.nn.functional.cross_entropy(logits[masked], batch["clean_ids"][masked], reduction="none")
    rows = masked.nonzero()[:, 0]
    expected = (ce * batch["loss_weight"][rows]).sum() / batch["maskable"].sum()
    assert torch.allclose(loss, expected, atol=1e-5)


def test_batch_without_maskable_token_is_skipped_and_counted(tmp_path, caplog):
    trainer = make_trainer(tmp_path)
    batch = noised_batch(trainer, range(4))
    batch["masked"][:] = False
    batch["maskable"][:] = False
    before = [p.clone() for p in trainer.model.parameters()]
    with caplog.at_level(logging.WARNING):
        loss = trainer.training_step(trainer.model, batch, None)
    assert loss.item() == 0.0 and trainer.skipped_empty_batches == 1
    assert "no maskable token" in caplog.text
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_evaluation_is_reproducible_and_reports_the_elbo_bound(tmp_path):
    trainer = make_trainer(tmp_path)
    first, second = trainer.evaluate(), trainer.evaluate()
    assert first["eval_loss"] == second["eval_loss"]
    assert first["eval_elbo_nll"] == second["eval_elbo_nll"]
    assert first["eval_elbo_nll"] > 0
    assert first["eval_elbo_perplexity"] == pytest.approx(torch.tensor(first["eval_elbo_nll"]).exp().item(), rel=1e-5)
    assert 0 <= first["eval_accuracy"] <= 1


def test_training_lowers_the_eval_elbo(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.args.max_steps = 40
    trainer.args.learning_rate = 3e-3
    before = trainer.evaluate(trainer.train_dataset)["eval_elbo_nll"]
    trainer.train()
    assert trainer.evaluate(trainer.train_dataset)["eval_elbo_nll"] < before - 0.5


def test_annealing_trains_with_a_partly_causal_mask(tmp_path):
    trainer = make_trainer(tmp_path, attention_annealing_steps=10)
    batch = noised_batch(trainer, range(4))
    trainer.model.train()
    mask = trainer.attention_mask_for(batch["attention_mask"], torch.float32)
    assert mask.shape == (4, 1, BLOCK, BLOCK)
    trainer.state.global_step = 10
    assert mask is not trainer.attention_mask_for(batch["attention_mask"], torch.float32)
    assert trainer.attention_mask_for(batch["attention_mask"], torch.float32).dim() == 2
    trainer.state.global_step = 0
    trainer.train()


def test_default_normalisation_follows_the_row_layout():
    assert default_normalization(layout("left")) == "llada_sft"
    assert default_normalization(layout("right")) == "llada_sft"  # fully attended, but one sample per row
    assert default_normalization(layout("packed")) == "llada_pretrain"


def test_diffusion_only_flags_need_train_diff_model(tmp_path):
    with pytest.raises(ValueError, match="only apply with --train_diff_model"):
        DiffusionTrainingArguments(output_dir=str(tmp_path), shift_logits=True)
    with pytest.raises(ValueError, match="loss_normalization"):
        DiffusionTrainingArguments(output_dir=str(tmp_path), train_diff_model=True, loss_normalization="mean")


def test_a_model_without_diffusion_config_or_a_layout_is_refused(tmp_path):
    tokenizer = make_byte_tokenizer()
    args = DiffusionTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", train_diff_model=True)
    with pytest.raises(ValueError, match="needs a masked-diffusion model"):
        DiffusionTrainer(make_tiny_llama(len(tokenizer)), args, row_layout=layout("left"))
    with pytest.raises(ValueError, match="layout"):
        DiffusionTrainer(diffusion_llama(tokenizer), args)
