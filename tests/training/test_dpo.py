"""DiffusionDPOTrainer: VRPO scores and loss, reference models, precomputed scores, accumulation, metrics."""

import copy
import itertools
import json
import math

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import TrainerControl, TrainerState

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.data.preference import PreferenceCollator, tokenize_pairs
from diff_trainer.diffusion.losses import diffusion_loss_sum, masked_token_losses, row_scales
from diff_trainer.diffusion_config import write_diffusion_config
from diff_trainer.objectives.masked import elbo_samples, model_logits
from diff_trainer.training.args.data import PreferenceDataArguments
from diff_trainer.training.args.dpo import DPOTrainingArguments
from diff_trainer.training.args.model import ModelArguments
from diff_trainer.training.dpo import (
    METRIC_NAMES,
    DiffusionDPOTrainer,
    MaskEpochCallback,
    precompute_reference_scores,
    preference_losses,
    sft_losses,
)
from diff_trainer.training.model import apply_lora

RECORDS = [
    {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1 + b)}
    for a, b in itertools.product(range(1, 5), range(2))
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def diffusion_llama(tokenizer, seed=0):
    model = make_tiny_llama(len(tokenizer), seed=seed)
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token="<DFF>",
    )
    return model


@pytest.fixture(scope="module")
def pairs(tokenizer):
    args = PreferenceDataArguments(train_file="unused", max_length=12, response_padding="ignore")
    return tokenize_pairs(DatasetDict({"train": Dataset.from_list(RECORDS)}), tokenizer, args, seed=5)["train"]


def make_trainer(tmp_path, tokenizer, pairs, model=None, ref_model=None, eval_dataset=None, **settings):
    """A trainer on `pairs`; with precompute_ref_scores the pairs are scored first, by ref_model or the policy."""
    settings = {
        "mc_samples": 4,
        "sft_weight": 0.0,
        "output_dir": str(tmp_path),
        "use_cpu": True,
        "report_to": "none",
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "max_steps": 1,
        "save_strategy": "no",
        "learning_rate": 1e-3,
        **settings,
    }
    args = DPOTrainingArguments(**settings)
    model = model if model is not None else diffusion_llama(tokenizer)
    if args.precompute_ref_scores:
        splits = {"train": pairs, **({"validation": eval_dataset} if eval_dataset is not None else {})}
        scored = precompute_reference_scores(
            DatasetDict(splits), ref_model if ref_model is not None else model, tokenizer, args
        )
        pairs, eval_dataset = scored["train"], scored.get("validation")
    return DiffusionDPOTrainer(
        model, ref_model, args=args, train_dataset=pairs, eval_dataset=eval_dataset, processing_class=tokenizer
    )


def collate(trainer, pairs, rows):
    return trainer.data_collator([pairs[i] for i in rows])


def test_preference_loss_and_rewards_by_hand():
    losses, chosen, rejected = preference_losses(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )
    assert chosen.item() == 0.5 and rejected.item() == -0.5
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.0)))


def test_policy_equal_to_reference_gives_log_2_and_zero_rewards_only_with_shared_masks(tmp_path, tokenizer, pairs):
    for antithetic in (True, False):
        trainer = make_trainer(tmp_path, tokenizer, pairs, antithetic_sampling=antithetic)
        model = trainer.model.train()
        loss, metrics = trainer.compute_loss(model, collate(trainer, pairs, range(8)), return_outputs=True)
        if antithetic:
            assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
            assert (metrics["rewards/chosen"] == 0).all() and (metrics["rewards/rejected"] == 0).all()
        else:
            # short responses: a pair's independent masks may coincide by chance, but not all of them
            assert (metrics["rewards/chosen"] != 0).sum() >= 4 and (metrics["rewards/rejected"] != 0).sum() >= 4
            assert loss.item() != pytest.approx(math.log(2), abs=1e-4)


def exact_elbo(model, prompt, response):
    """E_l E_mask[−(L/l) Σ_masked CE] by enumerating every non-empty subset of response positions."""
    length = len(response)
    clean = torch.tensor(prompt + response)
    total = 0.0
    for count in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), count))
        noisy = clean.repeat(len(subsets), 1)
        for row, subset in enumerate(subsets):
            noisy[row, [len(prompt) + i for i in subset]] = model.config.diffusion_config["mask_token_id"]
        with torch.no_grad():
            logits = model(input_ids=noisy).logits
        masked = noisy != clean
        ce = masked_token_losses(logits, clean.expand_as(noisy), masked).sum(1)
        total += (-(length / count) * ce).mean().item() / length  # l ~ U{1..L}, mask uniform given l
    return total


def test_estimator_mean_matches_the_brute_force_elbo(tokenizer):
    model = diffusion_llama(tokenizer)
    prompt, chosen = [51, 46, 52, 64], [52, 53, 54, 1]
    collator = PreferenceCollator(tokenizer.mask_token_id, tokenizer.pad_token_id, num_samples=2)
    draws = 300
    batch = collator(
        [
            {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": [60, 1], "mask_seed": seed}
            for seed in range(draws)
        ]
    )
    with torch.no_grad():
        scores = elbo_samples(model_logits(model, batch["attention_mask"], 2), batch, 2).mean(1)[:draws]
    exact = exact_elbo(model, prompt, chosen)
    assert abs(scores.mean().item() - exact) < 4 * scores.std().item() / math.sqrt(draws)
    assert scores.std().item() > 0


def test_sft_term_is_the_llada_sft_loss_on_the_chosen_masks(tmp_path, tokenizer, pairs):
    trainer = make_trainer(tmp_path, tokenizer, pairs)
    batch = collate(trainer, pairs, range(3))
    n, rows = 4, 3 * 4
    with torch.no_grad():
        terms = trainer.policy_terms(trainer.model, batch)
        logits = trainer.model(
            input_ids=batch["noisy_ids"][:rows], attention_mask=batch["attention_mask"][:3].repeat_interleave(n, 0)
        ).logits
    maskable = batch["maskable"][:3].repeat_interleave(n, 0)
    token_losses = masked_token_losses(logits, batch["input_ids"][:3].repeat_interleave(n, 0), batch["masked"][:rows])
    weight = maskable.sum(1) / batch["mask_counts"][:rows]  # L / l: the count form of 1 / t
    expected = diffusion_loss_sum(token_losses, weight, row_scales("llada_sft", maskable)) / rows
    assert sft_losses(terms[:3], batch["maskable"][:3].sum(1)).mean().item() == pytest.approx(expected.item(), rel=1e-5)
    with_sft = make_trainer(tmp_path, tokenizer, pairs, model=trainer.model, sft_weight=0.5)
    loss = with_sft.compute_loss(trainer.model.eval(), batch)
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * expected.item(), rel=1e-5)


def test_precomputed_reference_scores_equal_scores_on_the_fly(tmp_path, tokenizer, pairs):
    policy = diffusion_llama(tokenizer, seed=1)
    reference = diffusion_llama(tokenizer, seed=2)
    live = make_trainer(tmp_path, tokenizer, pairs, model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference))
    stored = make_trainer(
        tmp_path,
        tokenizer,
        pairs,
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(reference),
        eval_dataset=pairs,
        precompute_ref_scores=True,
    )
    assert stored.ref_model is None and stored.data_collator.fixed_epoch == 0
    batch = live.eval_collator([pairs[i] for i in range(8)])
    on_the_fly = live.reference_scores(live.model, batch)
    for dataset in (stored.train_dataset, stored.eval_dataset):
        precomputed = torch.tensor(list(dataset["ref_chosen_score"]) + list(dataset["ref_rejected_score"]))
        assert torch.allclose(precomputed, on_the_fly, atol=1e-5)
    precomputed_batch = stored.data_collator([stored.train_dataset[i] for i in range(8)])
    assert torch.equal(precomputed_batch["masked"], batch["masked"])  # the policy sees the reference's masks
    assert stored.compute_loss(stored.model, precomputed_batch).item() == pytest.approx(
        live.compute_loss(live.model, batch).item(), abs=1e-6
    )


def test_stored_scores_are_ignored_unless_precomputing_is_asked_for(tmp_path, tokenizer, pairs):
    stale = pairs.add_column("ref_chosen_score", [123.0] * len(pairs)).add_column(
        "ref_rejected_score", [456.0] * len(pairs)
    )
    trainer = make_trainer(tmp_path, tokenizer, stale)
    batch = collate(trainer, stale, range(4))
    assert "ref_scores" in batch
    assert torch.equal(
        trainer.reference_scores(trainer.model, batch),
        trainer.reference_scores(trainer.model, {k: v for k, v in batch.items() if k != "ref_scores"}),
    )


def test_lora_reference_is_the_base_model(tmp_path, tokenizer, pairs):
    base = diffusion_llama(tokenizer)
    untouched = copy.deepcopy(base)
    policy = apply_lora(base, ModelArguments(use_lora=True, lora_dropout=0.0), [])
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # adapters that change the outputs
    trainer = make_trainer(tmp_path, tokenizer, pairs, model=policy)
    assert trainer.ref_model is None
    batch = collate(trainer, pairs, range(4))
    with torch.no_grad():
        base_scores = elbo_samples(model_logits(untouched, batch["attention_mask"], 4), batch, 4).mean(1)
        policy_scores = trainer.policy_terms(trainer.model, batch).mean(1)
    assert torch.allclose(trainer.reference_scores(trainer.model, batch), base_scores, atol=1e-5)
    assert not torch.allclose(policy_scores, base_scores, atol=1e-2)


def gradients(model):
    return torch.cat([p.grad.reshape(-1).clone() for p in model.parameters() if p.grad is not None])


def test_two_accumulated_halves_give_the_gradient_of_the_whole_batch(tmp_path, tokenizer, pairs):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        pairs,
        model=diffusion_llama(tokenizer, seed=1),
        ref_model=diffusion_llama(tokenizer, seed=2),
        sft_weight=0.3,
    )
    model = trainer.model.train()
    whole = collate(trainer, pairs, range(8))
    halves = [collate(trainer, pairs, range(4)), collate(trainer, pairs, range(4, 8))]
    model.zero_grad()
    trainer.compute_loss(model, whole, num_items_in_batch=trainer._get_num_items_in_batch([whole], "cpu")).backward()
    one_batch = gradients(model)
    model.zero_grad()
    total = trainer._get_num_items_in_batch(halves, "cpu")
    assert total.item() == 8
    for half in halves:
        trainer.compute_loss(model, half, num_items_in_batch=total).backward()
    assert torch.allclose(gradients(model), one_batch, atol=1e-6)


def test_accumulation_through_train_matches_one_big_batch(tmp_path, tokenizer, pairs):
    weights = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        trainer = make_trainer(
            tmp_path / str(batch_size),
            tokenizer,
            pairs,
            model=diffusion_llama(tokenizer, seed=1),
            ref_model=diffusion_llama(tokenizer, seed=2),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            max_grad_norm=0.0,
            seed=3,
        )
        trainer.train()
        weights.append(torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]))
    start = torch.cat([p.detach().reshape(-1) for p in diffusion_llama(tokenizer, seed=1).parameters()])
    assert not torch.allclose(weights[0], start)
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_metrics_are_logged_with_trls_names_and_a_short_run_raises_reward_accuracy(tmp_path, tokenizer, pairs):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        pairs,
        eval_dataset=pairs,
        per_device_train_batch_size=8,
        max_steps=25,
        learning_rate=3e-3,
        logging_steps=5,
        eval_strategy="steps",
        eval_steps=25,
        sft_weight=0.05,
        beta=0.5,
    )
    before = trainer.evaluate()
    assert before["eval_rewards/accuracies"] == 0.0 and before["eval_rewards/margins"] == 0.0
    trainer.train()
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    eval_logs = [log for log in trainer.state.log_history if "eval_loss" in log]
    assert len(train_logs) == 5 and len(eval_logs) == 1  # train() starts a fresh log history
    for name in (*METRIC_NAMES, "sft_loss"):
        assert all(name in log for log in train_logs) and all(f"eval_{name}" in log for log in eval_logs)
    after = eval_logs[-1]
    assert after["eval_rewards/accuracies"] >= 0.75
    assert after["eval_rewards/margins"] > 0 and after["eval_loss"] < math.log(2)


def test_the_epoch_callback_moves_the_masks_on(tmp_path, tokenizer, pairs):
    trainer = make_trainer(tmp_path, tokenizer, pairs)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, MaskEpochCallback))
    state = TrainerState()
    state.epoch = 2.0
    callback.on_epoch_begin(trainer.args, state, TrainerControl())
    assert trainer.data_collator.epoch == 2 and trainer.eval_collator.fixed_epoch == 0
    precomputed = make_trainer(tmp_path, tokenizer, pairs, precompute_ref_scores=True)
    assert not any(isinstance(c, MaskEpochCallback) for c in precomputed.callback_handler.callbacks)


def test_a_causal_model_without_diffusion_config_is_refused(tmp_path, tokenizer, pairs):
    with pytest.raises(ValueError, match="not a masked-diffusion checkpoint"):
        make_trainer(tmp_path, tokenizer, pairs, model=make_tiny_llama(len(tokenizer), bidirectional=False))


def test_untokenised_pairs_are_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="tokenize_pairs"):
        make_trainer(tmp_path, tokenizer, Dataset.from_list(RECORDS))


def test_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="--mc_samples"):
        DPOTrainingArguments(output_dir=str(tmp_path), mc_samples=0)
    with pytest.raises(ValueError, match="--beta"):
        DPOTrainingArguments(output_dir=str(tmp_path), beta=0)


def test_precomputing_is_asked_for_explicitly(tmp_path, tokenizer, pairs):
    args = DPOTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", mc_samples=2, precompute_ref_scores=True
    )
    with pytest.raises(ValueError, match="precompute_reference_scores"):
        DiffusionDPOTrainer(diffusion_llama(tokenizer), args=args, train_dataset=pairs, processing_class=tokenizer)


def test_stored_scores_of_another_reference_or_seed_are_scored_again(tmp_path, tokenizer, pairs, caplog):
    from transformers import AutoModelForCausalLM

    directories = {}
    for seed in (1, 2):
        directories[seed] = tmp_path / f"reference-{seed}"
        diffusion_llama(tokenizer, seed=seed).save_pretrained(directories[seed])

    def scored(data, reference_seed, **settings):
        settings = {"mc_samples": 2, **settings}
        args = DPOTrainingArguments(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to="none",
            per_device_eval_batch_size=8,
            precompute_ref_scores=True,
            **settings,
        )
        reference = AutoModelForCausalLM.from_pretrained(directories[reference_seed])
        return precompute_reference_scores(DatasetDict({"train": data}), reference, tokenizer, args)["train"]

    stored = scored(pairs, 1)
    assert json.loads(stored[0]["ref_fingerprint"])["model"] == str(directories[1])
    assert scored(stored, 1) is stored  # same reference, budget and seed: kept as they are
    with caplog.at_level("WARNING", logger="diff_trainer.training.dpo"):
        other = scored(stored, 2)
    assert "Not using the stored reference scores: they were computed with model" in caplog.text
    assert "weights_sha256" in caplog.text and " seed " not in caplog.text
    assert other["ref_chosen_score"] == scored(pairs, 2)["ref_chosen_score"] != stored["ref_chosen_score"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="diff_trainer.training.dpo"):
        scored(stored, 1, seed=7, mc_samples=4)
    assert "they were computed with mc_samples 2 (now 4), seed 42 (now 7)" in caplog.text
    args = DPOTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", mc_samples=2, seed=7, precompute_ref_scores=True
    )
    with pytest.raises(ValueError, match="precompute_reference_scores"):  # the trainer checks the run settings too
        DiffusionDPOTrainer(diffusion_llama(tokenizer), args=args, train_dataset=stored, processing_class=tokenizer)


def test_masked_head_gives_the_full_logits_vrpo_loss_and_gradient(tmp_path, tokenizer, pairs):
    results = []
    for masked_head in (True, False):
        trainer = make_trainer(
            tmp_path,
            tokenizer,
            pairs,
            model=diffusion_llama(tokenizer, seed=1),
            ref_model=diffusion_llama(tokenizer, seed=2),
            sft_weight=0.3,
            masked_head=masked_head,
        )
        assert (trainer.masked_head is not None) == masked_head
        model = trainer.model.train()
        model.zero_grad()
        loss, metrics = trainer.compute_loss(model, collate(trainer, pairs, range(8)), return_outputs=True)
        loss.backward()
        results.append((loss.detach(), metrics["logps/chosen"].detach(), gradients(model)))
    for ours, full in zip(*results):
        torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    assert results[0][0].item() != pytest.approx(math.log(2), abs=1e-3)  # policy ≠ reference: a real comparison
