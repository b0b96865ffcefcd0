"""DiffusionTrainer: loss normalisation over accumulation, empty batches, seeded evaluation, ELBO, wiring errors."""

import logging
import math

import pytest
import torch
from datasets import Dataset
from transformers import default_data_collator

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.data.labels import IGNORE_INDEX
from diff_trainer.data.pipeline import RowLayout
from diff_trainer.diffusion.losses import LOSS_NORMALIZATIONS
from diff_trainer.diffusion_config import write_diffusion_config
from diff_trainer.objectives.masked import seeded_generator
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
from diff_trainer.training.trainer import DiffusionTrainer, default_normalization

BLOCK = 16


def make_rows(tokenizer, count=8, seed=0):
    """Left-padded prompt/response rows: prompt labels -100, response trained, padding ignored."""
    generator = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "labels": [], "attention_mask": []}
    for _ in range(count):
        prompt_len, answer_len = torch.randint(2, 5, (2,), generator=generator).tolist()
        pad = BLOCK - prompt_len - answer_len
        ids = [tokenizer.eos_token_id] * pad + torch.randint(
            10, 200, (prompt_len + answer_len,), generator=generator
        ).tolist()
        rows["input_ids"].append(ids)
        rows["labels"].append([IGNORE_INDEX] * (pad + prompt_len) + ids[pad + prompt_len :])
        rows["attention_mask"].append([0] * pad + [1] * (prompt_len + answer_len))
    return Dataset.from_dict(rows)


def layout(packing):
    return RowLayout(packing, BLOCK, "<DFF>", "byte", 386, "0")


def diffusion_llama(tokenizer):
    model = make_tiny_llama(len(tokenizer))
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token="<DFF>",
    )
    return model


def make_trainer(tmp_path, normalization="llada_sft", **diffusion):
    tokenizer = make_byte_tokenizer()
    args = DiffusionTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=1,
        learning_rate=1e-2,
        do_train=True,
        train_diff_model=True,
        loss_normalization=normalization,
        eval_mc_samples=4,
        **diffusion,
    )
    return DiffusionTrainer(
        diffusion_llama(tokenizer),
        args,
        row_layout=layout("left"),
        train_dataset=make_rows(tokenizer),
        eval_dataset=make_rows(tokenizer, 4, 1),
        processing_class=tokenizer,
    )


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


def hand_loss(kind, ce, weight, masked, maskable):
    """The DESIGN.md normalisations written out row by row: ce [B, L] is 0 off the masked positions."""
    per_row = weight * ce.sum(dim=1)
    if kind == "llada_pretrain":
        return per_row.sum() / maskable.numel()
    if kind == "llada_sft":
        return (per_row / maskable.sum(dim=1)).mean()
    return per_row.sum() / (masked.sum() if kind == "masked" else maskable.sum())


@pytest.mark.parametrize("normalization", LOSS_NORMALIZATIONS)
def test_loss_of_one_batch_matches_hand_normalisation(tmp_path, normalization):
    trainer = make_trainer(tmp_path, normalization)
    batch = noised_batch(trainer, range(4))
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = trainer.compute_loss(trainer.model, batch)
    masked = batch["masked"]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    ce = -log_probs.gather(-1, batch["clean_ids"].unsqueeze(-1)).squeeze(-1) * masked
    expected = hand_loss(normalization, ce, batch["loss_weight"].double(), masked, batch["maskable"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_shift_logits_scores_each_masked_token_with_the_previous_position(tmp_path):
    trainer = make_trainer(tmp_path, "token", shift_logits=True)
    batch = noised_batch(trainer, range(4))
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = trainer.compute_loss(trainer.model, batch)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    ce = torch.zeros(batch["masked"].shape, dtype=torch.float64)
    for row, position in batch["masked"].nonzero().tolist():
        if position > 0:  # logits at i-1 predict token i; position 0 has no predictor
            ce[row, position] = -log_probs[row, position - 1, batch["clean_ids"][row, position]]
    expected = hand_loss("token", ce, batch["loss_weight"].double(), batch["masked"], batch["maskable"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


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


def test_eval_elbo_of_a_uniform_model_is_log_vocabulary_size(tmp_path):
    # Zero output weights give uniform logits: every masked token costs log V, so the bound (L/l)·l·log V per row is
    # exactly log V per trained token whatever the masks.
    trainer = make_trainer(tmp_path)
    trainer.model.lm_head.weight.data.zero_()
    metrics = trainer.evaluate()
    vocabulary = trainer.model.config.vocab_size
    assert metrics["eval_elbo_nll"] == pytest.approx(math.log(vocabulary), rel=1e-5)
    assert metrics["eval_elbo_perplexity"] == pytest.approx(vocabulary, rel=1e-4)


def test_training_lowers_the_eval_elbo(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.args.max_steps = 40
    trainer.args.learning_rate = 3e-3
    before = trainer.evaluate(trainer.train_dataset)["eval_elbo_nll"]
    trainer.train()
    assert trainer.evaluate(trainer.train_dataset)["eval_elbo_nll"] < before - 0.5


def test_annealing_masks_used_in_training_open_future_keys_at_rate_step_over_n(tmp_path):
    trainer = make_trainer(tmp_path, attention_annealing_steps=8)
    trainer.args.max_steps = 10
    seen = []

    def record(module, args, kwargs):
        seen.append((trainer.state.global_step, kwargs["attention_mask"].clone(), kwargs["input_ids"].clone()))

    trainer.model.register_forward_pre_hook(record, with_kwargs=True)
    trainer.train()
    assert [step for step, _, _ in seen] == list(range(10))
    minimum = torch.finfo(torch.float32).min
    causal = torch.ones(BLOCK, BLOCK, dtype=torch.bool).tril()
    for step, mask, ids in seen:
        if step >= 8:  # r = min(1, step/N) = 1: the plain 2D padding mask, full attention
            assert mask.shape == (4, BLOCK)
            continue
        assert mask.shape == (4, 1, BLOCK, BLOCK) and mask.dtype == torch.float32
        assert ((mask == 0) | (mask == minimum)).all()
        allowed = mask[:, 0] == 0
        padding = (ids == trainer.processing_class.eos_token_id)[:, None, :].expand_as(allowed)  # make_rows pads
        assert not allowed[padding].any()  # padding is never attended
        past = causal.expand_as(allowed) & ~padding
        assert allowed[past].all()  # j <= i always allowed
        future = ~causal.expand_as(allowed) & ~padding
        share = allowed[future].float().mean().item()
        if step == 0:
            assert share == 0.0
        else:
            assert share == pytest.approx(step / 8, abs=0.12), step  # Bernoulli(step/N), ~400 future edges


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


def test_elbo_pass_runs_on_the_models_device_under_the_trainers_autocast(tmp_path, monkeypatch):
    """bf16 mixed precision: every ELBO forward runs under autocast with its inputs on the model's device."""
    trainer = make_trainer(tmp_path, bf16=True)
    loader = trainer.get_eval_dataloader()
    seen = []
    forward = trainer.model.forward

    def spy(*args, **kwargs):
        device = next(trainer.model.parameters()).device
        seen.append(
            (
                torch.is_autocast_enabled(device.type),
                torch.get_autocast_dtype(device.type),
                kwargs["input_ids"].device == device == kwargs["attention_mask"].device,
            )
        )
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", spy)
    metrics = trainer.elbo_metrics(loader, "eval")
    assert seen and all(entry == (True, torch.bfloat16, True) for entry in seen)
    assert metrics["eval_elbo_nll"] > 0


def test_masked_head_gives_the_full_logits_loss_gradient_and_elbo(tmp_path):
    masked_only, full = make_trainer(tmp_path / "a"), make_trainer(tmp_path / "b", masked_head=False)
    assert masked_only.masked_head is not None and full.masked_head is None
    batch = noised_batch(full, range(8))
    results = []
    for trainer in (masked_only, full):
        model = trainer.model.train()
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        results.append((loss.detach(), gradients(model), trainer.evaluate()["eval_elbo_nll"]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
    assert results[0][2] == pytest.approx(results[1][2], rel=1e-5)


def packed_rows(tokenizer, count=4):
    """Packed rows: documents of 3-6 random bytes, each ending in EOS, every token trained."""
    generator = torch.Generator().manual_seed(7)
    eos = tokenizer.eos_token_id
    ids = []
    while len(ids) < count * BLOCK:
        ids += torch.randint(
            10, 200, (int(torch.randint(3, 7, (1,), generator=generator)),), generator=generator
        ).tolist() + [eos]
    rows = [ids[i * BLOCK : (i + 1) * BLOCK] for i in range(count)]
    return Dataset.from_dict({"input_ids": rows, "labels": rows, "attention_mask": [[1] * BLOCK] * count})


def test_isolated_documents_mask_comes_from_the_clean_rows_eos(tmp_path):
    from diff_trainer.diffusion.attention import same_document_allowed

    tokenizer = make_byte_tokenizer()
    args = DiffusionTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        train_diff_model=True,
        isolate_documents=True,
        per_device_train_batch_size=4,
    )
    trainer = DiffusionTrainer(
        diffusion_llama(tokenizer),
        args,
        row_layout=layout("packed"),
        train_dataset=packed_rows(tokenizer),
        processing_class=tokenizer,
    )
    batch = noised_batch(trainer, range(4))
    assert (batch["input_ids"] != batch["clean_ids"])[batch["clean_ids"] == tokenizer.eos_token_id].any()
    mask = trainer.attention_for(batch["attention_mask"], batch["clean_ids"], torch.float32)
    allowed = same_document_allowed(batch["clean_ids"], batch["attention_mask"], tokenizer.eos_token_id)
    assert torch.equal(mask == 0, allowed) and not allowed.all()  # masked EOS still end their documents


def test_isolate_documents_needs_packed_rows(tmp_path):
    tokenizer = make_byte_tokenizer()
    args = DiffusionTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", train_diff_model=True, isolate_documents=True
    )
    with pytest.raises(ValueError, match="--isolate_documents .* add --concatenate_texts"):
        DiffusionTrainer(diffusion_llama(tokenizer), args, row_layout=layout("left"))


def test_isolation_under_flex_attention_is_a_block_mask_of_the_same_documents(tmp_path):
    from diff_trainer.diffusion.attention import same_document_allowed

    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer), attn_implementation="flex_attention")
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token="<DFF>",
    )
    settings = dict(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", train_diff_model=True, isolate_documents=True
    )
    trainer = DiffusionTrainer(
        model, DiffusionTrainingArguments(**settings), row_layout=layout("packed"), processing_class=tokenizer
    )
    rows = packed_rows(tokenizer)
    ids, attention = torch.tensor(rows["input_ids"]), torch.tensor(rows["attention_mask"])
    block_mask = trainer.attention_for(attention, ids, torch.float32)
    grid = torch.arange(BLOCK)
    allowed = block_mask.mask_mod(torch.arange(len(ids))[:, None, None], 0, grid[None, :, None], grid[None, None, :])
    assert torch.equal(allowed, same_document_allowed(ids, attention, tokenizer.eos_token_id)[:, 0])
    with pytest.raises(ValueError, match="needs a 4D mask"):
        DiffusionTrainer(
            model,
            DiffusionTrainingArguments(**settings, attention_annealing_steps=4),
            row_layout=layout("packed"),
            processing_class=tokenizer,
        )


def test_isolated_conversations_stay_whole_when_their_template_ends_turns_with_eos(tmp_path):
    """Packed conversations whose end-of-turn token is the EOS: isolation follows the lengths recorded at packing."""
    from diff_trainer.data.chat import set_chat_template
    from diff_trainer.data.pipeline import Preprocessor
    from diff_trainer.diffusion.attention import same_document_allowed
    from diff_trainer.training.args.data import DataArguments

    tokenizer = make_byte_tokenizer()
    set_chat_template(tokenizer, "chatml")
    tokenizer.eos_token = "<|im_end|>"
    turns = [
        [
            {"role": "user", "content": f"Q{k}?"},
            {"role": "assistant", "content": f"A{k}."},
            {"role": "user", "content": "More?"},
            {"role": "assistant", "content": "No."},
        ]
        for k in range(6)
    ]
    data_args = DataArguments(chat_template="chatml", block_size=96, concatenate_texts=True)
    rows, row_layout = Preprocessor(tokenizer, data_args).run(
        __import__("datasets").DatasetDict({"train": Dataset.from_dict({"messages": turns})})
    )
    args = DiffusionTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        train_diff_model=True,
        isolate_documents=True,
        per_device_train_batch_size=2,
    )
    trainer = DiffusionTrainer(
        diffusion_llama(tokenizer), args, row_layout=row_layout, train_dataset=rows["train"], processing_class=tokenizer
    )
    clean = default_data_collator([rows["train"][i] for i in range(2)])
    (batch,), _ = trainer.get_batch_samples(iter([clean]), 1, torch.device("cpu"))
    mask = trainer.attention_for(batch["attention_mask"], batch["clean_ids"], torch.float32, batch["document_ids"])
    # one conversation (user, assistant, user, assistant, the packing EOS) is 56 tokens: <|im_start|> and
    # <|im_end|> one id each, the rest bytes; rows hold conversation k's tokens at [56 k, 56 (k + 1)) of the stream
    stream = torch.arange(2 * 96).reshape(2, 96)
    conversation = stream // 56
    expected = (conversation[:, :, None] == conversation[:, None, :])[:, None]
    assert torch.equal(mask == 0, expected)
    eos_keyed = same_document_allowed(batch["clean_ids"], batch["attention_mask"], tokenizer.eos_token_id)
    assert not torch.equal(eos_keyed, expected)  # <|im_end|> after each turn would cut every conversation in four


def test_recorded_documents_that_match_the_eos_give_the_same_elbo(tmp_path):
    """Plain text ends each document with EOS only: recorded document ids and EOS-keyed ones must agree exactly."""
    tokenizer = make_byte_tokenizer()
    rows = packed_rows(tokenizer)
    documents = []
    for row_ids in rows["input_ids"]:  # count EOS by hand: each closes its document and belongs to it
        closed = [0]
        for token in row_ids:
            closed.append(closed[-1] + (token == tokenizer.eos_token_id))
        documents.append(closed[:-1])
    args = DiffusionTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        train_diff_model=True,
        isolate_documents=True,
        eval_mc_samples=2,
        per_device_eval_batch_size=4,
    )
    results = []
    for dataset in (rows, rows.add_column("document_ids", documents)):
        trainer = DiffusionTrainer(
            diffusion_llama(tokenizer),
            args,
            row_layout=layout("packed"),
            eval_dataset=dataset,
            processing_class=tokenizer,
        )
        results.append(trainer.evaluate())
    assert results[0]["eval_elbo_nll"] == results[1]["eval_elbo_nll"]
    assert results[0]["eval_loss"] == results[1]["eval_loss"]
