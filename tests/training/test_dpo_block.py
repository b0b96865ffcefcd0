"""VRPO / DPO on a block-diffusion checkpoint: the block ELBO's scores through the objective interface."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset, DatasetDict

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.data.preference import PreferenceCollator, tokenize_pairs
from diff_trainer.diffusion.block import block_times
from diff_trainer.diffusion.losses import masked_token_losses
from diff_trainer.diffusion.schedules import get_schedule
from diff_trainer.objectives.block import BlockDiffusion, BlockMasks
from diff_trainer.training.args.data import PreferenceDataArguments
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
from diff_trainer.training.args.dpo import DPOTrainingArguments
from diff_trainer.training.dpo import DiffusionDPOTrainer, precompute_reference_scores

RECORDS = [
    {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1 + b)}
    for a, b in itertools.product(range(1, 5), range(2))
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


@pytest.fixture(scope="module")
def pairs(tokenizer):
    args = PreferenceDataArguments(train_file="unused", max_length=12, response_padding="ignore")
    return tokenize_pairs(DatasetDict({"train": Dataset.from_list(RECORDS)}), tokenizer, args, seed=5)["train"]


def block_model(tokenizer, block_size, shift):
    args = DiffusionTrainingArguments(
        output_dir="unused",
        train_diff_model=True,
        diffusion_objective="block",
        diffusion_block_size=block_size,
        shift_logits=shift,
    )
    settings = {**args.diffusion_settings(), "dff_token": "<DFF>"}
    return BlockDiffusion.prepare_model(
        make_tiny_llama(len(tokenizer), seed=5), tokenizer, settings, masked_lm=False, auto_class="AutoModelForCausalLM"
    )


def dpo_trainer(tmp_path, tokenizer, pairs, model, **settings):
    args = DPOTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        max_steps=1,
        save_strategy="no",
        mc_samples=4,
        sft_weight=0.0,
        **settings,
    )
    return DiffusionDPOTrainer(model, args=args, train_dataset=pairs, processing_class=tokenizer)


def test_policy_equal_to_reference_gives_zero_log_ratios_and_log_2(tmp_path, tokenizer, pairs):
    trainer = dpo_trainer(tmp_path, tokenizer, pairs, block_model(tokenizer, 4, shift=True))
    assert trainer.data_collator.noise == BlockMasks(tokenizer.mask_token_id, trainer.objective.schedule, 4)
    batch = trainer.data_collator([pairs[i] for i in range(8)])
    loss, metrics = trainer.compute_loss(trainer.model.train(), batch, return_outputs=True)
    assert (metrics["rewards/chosen"] == 0).all() and (metrics["rewards/rejected"] == 0).all()
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert (metrics["logps/chosen"] < 0).all() and batch["masked"].any()
    loss.backward()  # the policy's scores carry a gradient
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())


def test_block_masks_time_each_block_and_mask_only_the_response(tokenizer):
    """The draw of the block NELBO bound (`noise_blocks`) on the sequence filled to whole blocks: one time per block
    of each copy, stratified over the n·blocks times (each block's n times cover [0, 1) once each), and each
    token weighted by its own block's w(t_b)."""
    schedule = get_schedule("linear")
    noise = BlockMasks(tokenizer.mask_token_id, schedule, 4)
    prompt, response = torch.arange(10, 15), torch.arange(20, 29)  # 14 tokens: blocks 0-3, the last one filled
    drawn = noise(prompt, response, 8, torch.Generator().manual_seed(3))
    assert drawn["noisy_ids"].shape == drawn["masked"].shape == drawn["mask_weights"].shape == (8, 14)
    assert not drawn["masked"][:, :5].any() and drawn["masked"].any()
    clean = torch.cat([prompt, response]).expand(8, -1)
    assert torch.equal(drawn["noisy_ids"], torch.where(drawn["masked"], tokenizer.mask_token_id, clean))
    times = block_times(8, 4, generator=torch.Generator().manual_seed(3))  # the first draw of the generator
    for block in range(4):
        assert torch.equal((times[:, block] * 8).floor().sort().values, torch.arange(8.0))
    expected = schedule.loss_weight(times).repeat_interleave(4, dim=1)[:, :14]
    assert torch.equal(drawn["mask_weights"], expected)


def test_one_block_per_row_scores_the_masked_diffusion_term_of_the_same_draw(tokenizer, pairs):
    """With L' longer than every row, each row is one block: its term is −w(t)·Σ_masked CE of the bidirectional
    model's plain forward on x_t, the masked-diffusion ELBO term (time form, MDLM) of the same draw. It is not the
    masked-diffusion DPO score of the same draw: that one masks exactly l ~ U{1..L} tokens and weights them L/l
    (LLaDA eq. 14, `CountMasks`), a different estimator of the same bound."""
    model = block_model(tokenizer, 16, shift=True).eval()
    objective = BlockDiffusion.from_model(model)
    n = 4
    noise = objective.preference_noise()
    collator = PreferenceCollator(tokenizer.mask_token_id, tokenizer.pad_token_id, n, noise=noise)
    batch = collator([pairs[i] for i in range(4)])
    assert batch["input_ids"].shape[1] < 16
    with torch.no_grad():
        terms = objective.preference_terms(model, batch, n)
        clean = batch["input_ids"].repeat_interleave(n, 0)
        attention = batch["attention_mask"].repeat_interleave(n, 0)
        logits = model(input_ids=batch["noisy_ids"], attention_mask=attention).logits
    row_weight = batch["mask_weights"][:, 0]
    assert torch.equal(batch["mask_weights"], row_weight[:, None] * attention)
    expected = -row_weight * masked_token_losses(logits, clean, batch["masked"], shift=True).sum(1)
    torch.testing.assert_close(terms.reshape(-1), expected, atol=1e-5, rtol=1e-5)
    assert (terms != 0).any()


class ConstantLogits(torch.nn.Module):
    """A 'model' whose logits are the same at every position, whatever it is fed."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, input_ids, position_ids=None, attention_mask=None):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


@pytest.mark.parametrize("shift", [False, True])
def test_a_score_by_hand(shift):
    """Vocabulary of 4, logits log [1, 3, 2, 1] everywhere: p = [1, 3, 2, 1] / 7. L' = 2, one copy per row.
    Row 0: clean [0, 1, 2, 2], tokens 1 and 3 masked, block weights 2 and 4: −(2·log 7/3 + 4·log 7/2).
    Row 1: clean [0, 2] and two padding positions, token 1 masked with weight 5: −5·log 7/2."""
    objective = BlockDiffusion(3, shift, 2, get_schedule("linear"), None, None)
    model = ConstantLogits(torch.tensor([1.0, 3.0, 2.0, 1.0]).log())
    batch = {
        "input_ids": torch.tensor([[0, 1, 2, 2], [0, 2, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
        "noisy_ids": torch.tensor([[0, 3, 2, 3], [0, 3, 0, 0]]),
        "masked": torch.tensor([[False, True, False, True], [False, True, False, False]]),
        "mask_weights": torch.tensor([[2.0, 2.0, 4.0, 4.0], [5.0, 5.0, 0.0, 0.0]]),
    }
    terms = objective.preference_terms(model, batch, 1)
    expected = torch.tensor([[-(2 * math.log(7 / 3) + 4 * math.log(7 / 2))], [-5 * math.log(7 / 2)]])
    torch.testing.assert_close(terms, expected)


def test_a_reference_with_other_blocks_and_the_masked_head_are_refused(tmp_path, tokenizer, pairs):
    policy = block_model(tokenizer, 4, shift=True)
    with pytest.raises(ValueError, match="block_size=2.*block_size=4.*same noisy copies"):
        DiffusionDPOTrainer(
            policy,
            block_model(tokenizer, 2, shift=True),
            args=DPOTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
            train_dataset=pairs,
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="--masked_head true: block diffusion scores read the logits"):
        dpo_trainer(tmp_path, tokenizer, pairs, policy, masked_head=True)


def test_precomputed_reference_scores_are_the_block_scores_of_the_same_copies(tmp_path, tokenizer, pairs):
    model = block_model(tokenizer, 4, shift=True)
    args = DPOTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", mc_samples=4, precompute_ref_scores=True
    )
    stored = precompute_reference_scores(DatasetDict({"train": pairs}), model, tokenizer, args)["train"]
    trainer = dpo_trainer(tmp_path, tokenizer, stored, model, precompute_ref_scores=True)
    batch = trainer.data_collator([stored[i] for i in range(8)])
    with torch.no_grad():
        live = trainer.objective.preference_terms(model, batch, 4).mean(1)
    torch.testing.assert_close(batch["ref_scores"], live, atol=1e-5, rtol=1e-5)
    assert "mask_weights" in batch and (live < 0).all()
