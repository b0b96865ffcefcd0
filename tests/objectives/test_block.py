"""Block diffusion in the Trainer: the causal identity through compute_loss, the recorded settings, the flags it
refuses, the block NELBO, and run_clm_diff + diff-generate / diff-view end to end on the bundled corpus."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, default_data_collator

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.cli import generate as generate_cli
from diff_trainer.cli import view as view_cli
from diff_trainer.data.pipeline import RowLayout
from diff_trainer.diffusion.block import block_token_losses
from diff_trainer.diffusion_config import read_diffusion_config
from diff_trainer.objectives import objective_for
from diff_trainer.objectives.block import BlockDiffusion
from diff_trainer.objectives.masked import seeded_generator
from diff_trainer.sampling.block import BlockSamplerConfig
from diff_trainer.sampling.settings import sampler_for
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
from diff_trainer.training.trainer import DiffusionTrainer

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("run_clm_diff", ROOT / "run_clm_diff.py")
run_clm_diff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_clm_diff)
LENGTH = 12


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


def rows(tokenizer, count=4):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 200, (count, LENGTH), generator=generator)
    labels = ids.clone()
    labels[:, 0] = -100  # a shift model never scores position 0
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "labels": labels.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    )


def block_trainer(tmp_path, block_size, shift=True, normalization="masked", packing="right", **flags):
    tokenizer = make_byte_tokenizer()
    args = DiffusionTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        max_steps=1,
        train_diff_model=True,
        diffusion_objective="block",
        diffusion_block_size=block_size,
        shift_logits=shift,
        loss_normalization=normalization,
        **flags,
    )
    return DiffusionTrainer(
        block_model(tokenizer, block_size, shift),
        args,
        row_layout=RowLayout(packing, LENGTH, "<DFF>", "byte", 386, "0"),
        train_dataset=rows(tokenizer),
        processing_class=tokenizer,
    )


def test_checkpoint_records_the_objective_and_block_size(tmp_path):
    trainer = block_trainer(tmp_path, 4)
    recorded = read_diffusion_config(trainer.model.config)
    assert recorded["objective"] == "block" and recorded["block_size"] == 4 and recorded["shift_logits"]
    assert isinstance(trainer.objective, BlockDiffusion) and objective_for(recorded) is BlockDiffusion
    tokenizer = trainer.processing_class
    config = sampler_for(trainer.model, tokenizer, gen_length=8)
    assert isinstance(config, BlockSamplerConfig)
    assert (config.model_block_size, config.block_length, config.steps, config.shift) == (4, 4, 8, True)


def test_one_token_blocks_through_the_trainer_score_each_masked_token_by_the_causal_lm(tmp_path):
    """L' = 1 with shift: compute_loss = Σ_masked w(t_i) · (causal CE of token i given x0_<i) / masked count."""
    trainer = block_trainer(tmp_path, 1)
    causal = make_tiny_llama(len(trainer.processing_class), bidirectional=False, seed=5)
    clean = default_data_collator([trainer.train_dataset[i] for i in range(4)])
    batch = trainer.train_noiser(clean, seeded_generator(7))
    masked = batch["masked"]
    assert masked.any() and (~masked & batch["maskable"]).any()
    loss = trainer.compute_loss(trainer.model, batch)
    logits = causal(input_ids=clean["input_ids"]).logits
    causal_ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), clean["input_ids"][:, 1:], reduction="none")
    causal_ce = F.pad(causal_ce, (1, 0))
    expected = (causal_ce * batch["loss_weight"] * masked).sum() / masked.sum()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_complementary_masks_train_every_row_twice_with_complementary_masks(tmp_path):
    trainer = block_trainer(tmp_path, 4, complementary_masks=True)
    clean = default_data_collator([trainer.train_dataset[i] for i in range(4)])
    batch = trainer.train_noiser(clean, seeded_generator(7))
    assert batch["input_ids"].shape == (8, LENGTH) and batch["attention_mask"].shape == (8, LENGTH)
    assert torch.equal(batch["masked"][:4] ^ batch["masked"][4:], batch["maskable"][:4])
    assert torch.isfinite(trainer.compute_loss(trainer.model, batch))


def test_isolated_documents_of_a_packed_row_see_nothing_of_each_other(tmp_path):
    """--isolate_documents: the block mask ANDed with the document mask in both halves of [x_t ; x0], so the loss
    terms of one document do not change when the other document's tokens do (they do without isolation)."""
    trainer = block_trainer(tmp_path, 4, packing="packed", isolate_documents=True)
    eos = trainer.processing_class.eos_token_id
    clean = default_data_collator([trainer.train_dataset[i] for i in range(2)])
    clean["input_ids"][:, 5] = eos  # documents: positions 0-5 and 6-11 (a boundary inside block 1)
    other = {key: value.clone() for key, value in clean.items()}
    other["input_ids"][:, 1:5] = 7  # only the first document changes
    batch = trainer.train_noiser(clean, seeded_generator(3))
    changed = trainer.train_noiser(other, seeded_generator(3))
    assert torch.equal(batch["masked"], changed["masked"]) and batch["masked"][:, 6:].any()

    def second_document_terms(batch, isolate):
        trainer.args.isolate_documents = isolate
        attention = trainer.attention_for(batch["attention_mask"], batch["clean_ids"], torch.float32)
        logits = trainer.objective.forward(trainer.model, batch["input_ids"], batch["clean_ids"], attention)
        losses = block_token_losses(logits, batch["clean_ids"], batch["masked"], 4, shift=True)
        return losses[:, 7:]  # position 6 is predicted from position 5, the first document's EOS

    torch.testing.assert_close(second_document_terms(batch, True), second_document_terms(changed, True))
    assert not torch.allclose(second_document_terms(batch, False), second_document_terms(changed, False))
    trainer.args.isolate_documents = True
    assert torch.isfinite(trainer.compute_loss(trainer.model, batch))


def test_block_nelbo_averages_the_loss_terms_of_the_same_draws_and_fills_rows_to_whole_blocks(tmp_path):
    """The bound of n samples per row draws exactly what the evaluation noiser draws for the n copies of each row
    (same generator), so its per-row mean / maskable count averages to the "llada_sft" loss of that batch. A row of
    10 tokens is scored as 12, the two filled positions neither scored nor seen."""
    trainer = block_trainer(tmp_path, 4, shift=False)
    objective, model = trainer.objective, trainer.model.eval()
    clean = default_data_collator([trainer.train_dataset[i] for i in range(2)])
    ids, maskable = clean["input_ids"], clean["labels"] != -100
    nll = objective.elbo_nll(model, ids, None, maskable, 8, torch.Generator().manual_seed(1), chunk_size=5)
    copies = {key: value.repeat_interleave(8, dim=0) for key, value in clean.items()}
    with torch.no_grad():
        loss, _ = objective.loss(model, objective.eval_noiser(copies, torch.Generator().manual_seed(1)), "llada_sft")
    torch.testing.assert_close(loss, (nll / maskable.sum(1)).mean(), atol=1e-5, rtol=1e-5)
    short = objective.elbo_nll(model, ids[:, :10], None, maskable[:, :10], 4, torch.Generator().manual_seed(1))
    assert torch.isfinite(short).all() and (short > 0).all()
    filled, padding = objective.whole_blocks(ids[:, :10])
    assert torch.equal(filled[:, 10:], torch.full((2, 2), objective.mask_token_id)) and padding[:, 10:].sum() == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--diffusion_objective", "block"], "needs --diffusion_block_size"),
        (
            ["--diffusion_objective", "block", "--diffusion_block_size", "4", "--prompt_dropout", "0.1"],
            "only apply with --diffusion_objective masked",
        ),
        (
            ["--diffusion_objective", "block", "--diffusion_block_size", "4", "--masked_head", "true"],
            "only apply with --diffusion_objective masked",
        ),
        (
            [
                "--diffusion_objective",
                "block",
                "--diffusion_block_size",
                "4",
                "--complementary_masks",
                "true",
                "--noise_schedule",
                "cosine",
            ],
            "use --noise_schedule linear",
        ),
        (["--diffusion_block_size", "4"], "only apply with --diffusion_objective block"),
        (
            ["--diffusion_objective", "sedd_absorb", "--complementary_masks", "true"],
            "only apply with --diffusion_objective block",
        ),
    ],
)
def test_flags_that_do_not_compose_with_block_diffusion_are_refused(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        run_clm_diff.main(["--output_dir", str(tmp_path), "--train_diff_model", "true", *flags])
    assert message in capsys.readouterr().err


DEMO_FLAGS = [
    "--train_file",
    str(ROOT / "data/stdlib_docstrings/train.jsonl.zst"),
    "--validation_file",
    str(ROOT / "data/stdlib_docstrings/validation.jsonl.zst"),
    "--config_overrides",
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=2,"
    "num_key_value_heads=2,max_position_embeddings=64",
    "--block_size",
    "32",
    "--max_train_samples",
    "64",
    "--max_eval_samples",
    "8",
    "--eval_mc_samples",
    "2",
    "--eval_strategy",
    "no",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
]


def test_block_size_that_does_not_divide_the_rows_is_refused(tmp_path):
    with pytest.raises(ValueError, match="divisor of the row length 32"):
        run_clm_diff.main(
            [
                str(ROOT / "configs" / "demo.yaml"),
                "--output_dir",
                str(tmp_path),
                *DEMO_FLAGS,
                "--diffusion_objective",
                "block",
                "--diffusion_block_size",
                "5",
                "--max_steps",
                "1",
            ]
        )


def test_demo_data_trains_a_block_model_that_diff_generate_and_diff_view_sample(tmp_path):
    out = tmp_path / "block"
    run_clm_diff.main(
        [
            str(ROOT / "configs" / "demo.yaml"),
            "--output_dir",
            str(out),
            *DEMO_FLAGS,
            "--diffusion_objective",
            "block",
            "--diffusion_block_size",
            "4",
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--per_device_eval_batch_size",
            "4",
        ]
    )
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["eval_elbo_nll"] > 0 and "eval_accuracy" in metrics
    recorded = read_diffusion_config(AutoModelForCausalLM.from_pretrained(out).config)
    assert recorded["objective"] == "block" and recorded["block_size"] == 4

    samples = tmp_path / "samples.jsonl"
    generate_cli.main(
        [
            "--model",
            str(out),
            "--prompt",
            "Return the",
            "--gen_length",
            "8",
            "--threshold",
            "0.9",
            "--seed",
            "0",
            "--output",
            str(samples),
        ]
    )
    record = json.loads(samples.read_text().splitlines()[0])
    assert record["settings"]["sampler"] == "block" and 1 <= record["nfe"] <= 1 + 8 + 2
    gif = tmp_path / "blocks.gif"
    view_cli.main(
        ["--model", str(out), "--prompt", "Return the", "--gen_length", "8", "--seed", "0", "--gif", str(gif)]
    )
    assert gif.stat().st_size > 0


def test_diff_eval_arithmetic_samples_a_block_checkpoint_with_the_block_sampler(tmp_path, capsys):
    """No sampler flags needed: the completions it scores are the block sampler's on the same prompts (prompt<DFF>,
    batches of 2)."""
    from diff_trainer.cli import eval_arithmetic
    from diff_trainer.sampling.block import sample_blocks

    tokenizer = make_byte_tokenizer()
    model = block_model(tokenizer, 4, shift=True)
    model.save_pretrained(tmp_path / "block")
    tokenizer.save_pretrained(tmp_path / "block")
    problems, output = tmp_path / "test.jsonl", tmp_path / "predictions.jsonl"
    problems.write_text("".join(json.dumps({"text": f"{a}+1=<DFF>{a + 1}"}) + "\n" for a in (1, 23, 7)))
    flags = ["--model", str(tmp_path / "block"), "--test_file", str(problems), "--seed", "0", "--batch_size", "2"]
    eval_arithmetic.main([*flags, "--threshold", "0.9", "--output", str(output)])
    assert "exact match: 0.0000 (0/3)" in capsys.readouterr().out
    records = [json.loads(line) for line in output.read_text().splitlines()]
    config = sampler_for(model, tokenizer, gen_length=8, threshold=0.9)  # the command's default length
    prompts = [tokenizer(f"{a}+1=<DFF>", add_special_tokens=False)["input_ids"] for a in (1, 23, 7)]
    expected, nfe = [], []
    for batch in (prompts[:2], prompts[2:]):
        result = sample_blocks(model, batch, config, generator=torch.Generator().manual_seed(0))
        expected += [generate_cli.completion_text(tokenizer, ids) for ids in result.generated.tolist()]
        nfe += result.row_nfe
    assert [record["completion"] for record in records] == expected and [r["nfe"] for r in records] == nfe
    assert records[0]["settings"]["model_block_size"] == 4


def train_block(out, *extra):
    """A few steps of block diffusion (L' = 4) on the bundled corpus with the tiny net, the loss logged every step."""
    run_clm_diff.main(
        [
            str(ROOT / "configs" / "demo.yaml"),
            "--output_dir",
            str(out),
            *DEMO_FLAGS,
            "--diffusion_objective",
            "block",
            "--diffusion_block_size",
            "4",
            "--shift_logits",
            "true",
            "--per_device_train_batch_size",
            "4",
            "--logging_steps",
            "1",
            "--do_eval",
            "false",
            *extra,
        ]
    )
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def test_resume_repeats_the_uninterrupted_block_losses(tmp_path):
    common = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    whole = train_block(tmp_path / "whole", *common)
    resumed = train_block(
        tmp_path / "resumed", *common, "--resume_from_checkpoint", str(tmp_path / "whole" / "checkpoint-2")
    )
    assert sorted(resumed) == [1, 2, 3, 4]  # the history of checkpoint-2, then steps 3 and 4 trained again
    assert resumed[3] == pytest.approx(whole[3], rel=1e-6) and resumed[4] == pytest.approx(whole[4], rel=1e-6)


def test_gradient_checkpointing_leaves_the_block_losses_unchanged(tmp_path):
    plain = train_block(tmp_path / "plain", "--max_steps", "2")
    checkpointed = train_block(tmp_path / "checkpointed", "--max_steps", "2", "--gradient_checkpointing", "true")
    assert checkpointed[1] == pytest.approx(plain[1], rel=1e-5) and checkpointed[2] == pytest.approx(plain[2], rel=1e-5)


def test_lora_on_a_block_model_is_sampled_with_the_block_sampler(tmp_path):
    train_block(tmp_path / "base", "--max_steps", "1")
    train_block(
        tmp_path / "lora",
        "--model_name_or_path",
        str(tmp_path / "base"),
        "--config_overrides",
        "",
        "--use_lora",
        "true",
        "--lora_r",
        "4",
        "--max_steps",
        "2",
        "--learning_rate",
        "0.05",
    )
    assert (tmp_path / "lora" / "adapter_model.safetensors").exists()
    output = tmp_path / "samples.jsonl"
    generate_cli.main(
        ["--model", str(tmp_path / "lora"), "--prompt", "Return the", "--gen_length", "8", "--output", str(output)]
    )
    record = json.loads(output.read_text().splitlines()[0])
    assert record["settings"]["sampler"] == "block" and record["settings"]["model_block_size"] == 4
