"""End to end: run_clm_diff.main --train_diff_model on the bundled corpus trains, lowers the ELBO, resumes exactly."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from diff_trainer.cli import generate as generate_cli
from diff_trainer.cli.generate import completion_text
from diff_trainer.diffusion_config import read_diffusion_config
from diff_trainer.sampling.masked import generate, special_token_ids_to_forbid

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("run_clm_diff", ROOT / "run_clm_diff.py")
run_clm_diff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_clm_diff)


def log_history(output_dir):
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def test_demo_config_trains_a_diffusion_model_and_resumes(tmp_path):
    out = tmp_path / "diffusion"
    flags = [
        str(ROOT / "configs" / "demo.yaml"),
        "--output_dir",
        str(out),
        "--train_file",
        str(ROOT / "data/stdlib_docstrings/train.jsonl.zst"),
        "--validation_file",
        str(ROOT / "data/stdlib_docstrings/validation.jsonl.zst"),
        "--config_overrides",
        "hidden_size=64,intermediate_size=128,num_hidden_layers=2,num_attention_heads=4,"
        "num_key_value_heads=4,max_position_embeddings=128",
        "--block_size",
        "128",
        "--max_train_samples",
        "400",
        "--max_eval_samples",
        "16",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "30",
        "--eval_on_start",
        "true",
        "--save_steps",
        "30",
        "--learning_rate",
        "3e-3",
        "--warmup_steps",
        "0",
        "--disable_tqdm",
        "true",
    ]
    run_clm_diff.main(flags + ["--max_steps", "30"])

    evals = [entry for entry in log_history(out) if "eval_elbo_nll" in entry]
    assert [entry["step"] for entry in evals][:2] == [0, 30]
    assert evals[1]["eval_elbo_nll"] < evals[0]["eval_elbo_nll"] - 1.0
    model = AutoModelForCausalLM.from_pretrained(out)
    settings = read_diffusion_config(model.config)
    assert settings["objective"] == "masked_diffusion" and model.config.is_causal is False
    assert settings["mask_token_id"] < model.config.vocab_size

    run_clm_diff.main(flags + ["--max_steps", "32", "--resume", "--eval_on_start", "false"])
    history = log_history(out)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 32
    assert [e["step"] for e in history if "eval_elbo_nll" in e][:2] == [0, 30]  # history continued, not restarted


KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from transformers import Trainer

save_checkpoint = Trainer._save_checkpoint


def save_then_die(self, model, trial):
    save_checkpoint(self, model, trial)
    if self.state.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)  # as a preempted job: no clean-up, no final save


Trainer._save_checkpoint = save_then_die
sys.path.insert(0, {root!r})
import run_clm_diff

run_clm_diff.main(sys.argv[1:])
"""


def step_losses(output_dir):
    return {entry["step"]: entry["loss"] for entry in log_history(output_dir) if "loss" in entry}


def test_sigkill_then_resume_reproduces_the_uninterrupted_losses_step_for_step(tmp_path):
    """Masks, times, random lengths and prompt dropout come from (seed, step, micro-batch, process): exact resume."""
    with open(tmp_path / "train.jsonl", "w") as handle:
        for i in range(48):
            handle.write(json.dumps({"text": f"q{i % 7}+{i}=<DFF>" + "ab" * (1 + i % 9)}) + "\n")
    flags = [
        "--train_file",
        str(tmp_path / "train.jsonl"),
        "--model_type",
        "llama",
        "--config_overrides",
        "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=4,"
        "max_position_embeddings=64",
        "--tokenizer_name",
        "byte",
        "--block_size",
        "32",
        "--validation_split_percentage",
        "0",
        "--train_diff_model",
        "--random_length_prob",
        "0.3",
        "--prompt_dropout",
        "0.3",
        "--do_train",
        "--max_steps",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--learning_rate",
        "3e-3",
        "--logging_steps",
        "1",
        "--save_steps",
        "4",
        "--report_to",
        "none",
        "--use_cpu",
        "--seed",
        "7",
        "--disable_tqdm",
        "true",
    ]
    run_clm_diff.main(flags + ["--output_dir", str(tmp_path / "whole")])

    interrupted = tmp_path / "interrupted"
    script = tmp_path / "killed_run.py"
    script.write_text(KILL_AFTER_CHECKPOINT.format(step=4, root=str(ROOT)))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    killed = subprocess.run(
        [sys.executable, str(script), *flags, "--output_dir", str(interrupted)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (interrupted / "checkpoint-4").is_dir() and not (interrupted / "trainer_state.json").exists()

    run_clm_diff.main(flags + ["--output_dir", str(interrupted), "--resume"])
    whole, resumed = step_losses(tmp_path / "whole"), step_losses(interrupted)
    assert sorted(resumed) == list(range(1, 9))
    assert [resumed[step] for step in range(5, 9)] == [whole[step] for step in range(5, 9)]
    assert len(set(whole.values())) == 8  # the losses do change from step to step


def test_reused_right_padded_rows_keep_sft_normalisation_and_their_block_size(tmp_path, caplog):
    with open(tmp_path / "train.jsonl", "w") as handle:
        handle.writelines(json.dumps({"text": f"{i}+1=<DFF>{i + 1}"}) + "\n" for i in range(12))
    model = [
        "--model_type",
        "llama",
        "--config_overrides",
        "hidden_size=32,intermediate_size=64,num_hidden_layers=1,"
        "num_attention_heads=4,num_key_value_heads=4,max_position_embeddings=64",
        "--tokenizer_name",
        "byte",
        "--output_dir",
        str(tmp_path / "out"),
        "--report_to",
        "none",
        "--use_cpu",
        "--disable_tqdm",
        "true",
    ]
    run_clm_diff.main(
        model
        + [
            "--train_file",
            str(tmp_path / "train.jsonl"),
            "--block_size",
            "24",
            "--padding_side",
            "right",
            "--validation_split_percentage",
            "0",
            "--save_final_dataset",
            str(tmp_path / "rows"),
        ]
    )
    with caplog.at_level("INFO", logger="diff_trainer"):
        run_clm_diff.main(
            model
            + [
                "--dataset_name",
                str(tmp_path / "rows"),
                "--load_from_disk",
                "--skip_concat",
                "--train_diff_model",
                "--do_train",
                "--max_steps",
                "1",
            ]
        )
    assert "Rows: right, block size 24" in caplog.text
    assert "loss normalisation llada_sft" in caplog.text


# ----------------------------------------------------------------------------------------------------
# README promises, each run end to end on tiny arithmetic records

TINY = (
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=4,"
    "max_position_embeddings=64"
)


@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("arithmetic") / "train.jsonl"
    with open(path, "w") as handle:
        for a in range(8):
            for b in range(5):
                handle.write(json.dumps({"text": f"{a}+{b}=<DFF>{a + b}"}) + "\n")
    return str(path)


def diffusion_flags(train_file, output_dir, *extra):
    return [
        "--train_file",
        train_file,
        "--validation_split_percentage",
        "20",
        "--tokenizer_name",
        "byte",
        "--block_size",
        "16",
        "--train_diff_model",
        "--output_dir",
        str(output_dir),
        "--do_train",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--logging_steps",
        "1",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--seed",
        "11",
        "--eval_mc_samples",
        "2",
        *extra,
    ]


def sample_with_cli(model_dir, tmp_path, *extra) -> dict:
    output = tmp_path / f"{Path(model_dir).name}.jsonl"
    generate_cli.main(
        [
            "--model",
            str(model_dir),
            "--prompt",
            "3+4=",
            "--append_dff",
            "--gen_length",
            "4",
            "--steps",
            "4",
            "--output",
            str(output),
            *extra,
        ]
    )
    return json.loads(output.read_text().splitlines()[0])


def losses_by_step(output_dir) -> dict:
    return {entry["step"]: entry["loss"] for entry in log_history(output_dir) if "loss" in entry}


def test_resume_from_checkpoint_path_repeats_the_uninterrupted_losses(tmp_path, arithmetic):
    common = ["--model_type", "llama", "--config_overrides", TINY, "--max_steps", "4", "--save_steps", "2"]
    run_clm_diff.main(diffusion_flags(arithmetic, tmp_path / "whole", *common))
    run_clm_diff.main(
        diffusion_flags(
            arithmetic,
            tmp_path / "resumed",
            *common,
            "--resume_from_checkpoint",
            str(tmp_path / "whole" / "checkpoint-2"),
        )
    )
    whole, resumed = losses_by_step(tmp_path / "whole"), losses_by_step(tmp_path / "resumed")
    assert sorted(resumed) == [1, 2, 3, 4]  # the history of checkpoint-2, then steps 3 and 4 trained again
    assert resumed[3] == pytest.approx(whole[3], rel=1e-6) and resumed[4] == pytest.approx(whole[4], rel=1e-6)


def test_lora_training_is_sampled_by_diff_generate_as_the_merged_model(tmp_path, arithmetic):
    base = tmp_path / "base"
    run_clm_diff.main(
        diffusion_flags(
            arithmetic,
            base,
            "--model_type",
            "llama",
            "--config_overrides",
            TINY,
            "--max_steps",
            "1",
            "--save_strategy",
            "no",
        )
    )
    lora = tmp_path / "lora"
    run_clm_diff.main(
        diffusion_flags(
            arithmetic,
            lora,
            "--model_name_or_path",
            str(base),
            "--use_lora",
            "--lora_r",
            "4",
            "--max_steps",
            "3",
            "--save_strategy",
            "no",
            "--learning_rate",
            "0.05",
        )
    )
    assert (lora / "adapter_model.safetensors").exists()
    record = sample_with_cli(lora, tmp_path)

    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lora)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), lora).merge_and_unload().eval()
    settings = read_diffusion_config(merged.config)
    prompt = tokenizer.encode("3+4=<DFF>", add_special_tokens=False)
    by_hand = generate(
        merged,
        [prompt],
        mask_token_id=settings["mask_token_id"],
        gen_length=4,
        steps=4,
        block_length=4,
        eos_token_id=tokenizer.eos_token_id,
        forbidden_token_ids=special_token_ids_to_forbid(tokenizer),
    )  # as the CLI samples
    assert record["completion"] == completion_text(tokenizer, by_hand.generated[0].tolist())
    with torch.no_grad():  # the adapter was trained: the merged model is not the base model
        ids = torch.tensor([prompt])
        assert not torch.allclose(
            merged(input_ids=ids).logits, AutoModelForCausalLM.from_pretrained(base)(input_ids=ids).logits, atol=1e-4
        )


def test_shift_logits_adapts_a_causal_checkpoint_and_samples_with_the_shift(tmp_path, arithmetic):
    causal = tmp_path / "causal"
    run_clm_diff.main(
        [
            "--train_file",
            arithmetic,
            "--tokenizer_name",
            "byte",
            "--block_size",
            "16",
            "--model_type",
            "llama",
            "--config_overrides",
            TINY,
            "--output_dir",
            str(causal),
            "--do_train",
            "--max_steps",
            "1",
            "--use_cpu",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ]
    )
    adapted = tmp_path / "adapted"
    run_clm_diff.main(
        diffusion_flags(
            arithmetic,
            adapted,
            "--model_name_or_path",
            str(causal),
            "--shift_logits",
            "--attention_annealing_steps",
            "2",
            "--max_steps",
            "3",
            "--do_eval",
            "--save_strategy",
            "no",
        )
    )
    config = json.loads((adapted / "config.json").read_text())
    assert config["diffusion_config"]["shift_logits"] is True and config["is_causal"] is False
    metrics = json.loads((adapted / "eval_results.json").read_text())
    assert metrics["eval_elbo_perplexity"] == pytest.approx(math.exp(metrics["eval_elbo_nll"]), rel=1e-6)
    record = sample_with_cli(adapted, tmp_path, "--block_length", "4")
    assert record["settings"]["shift"] is True and record["nfe"] == 4


def test_masked_lm_encoder_trains_and_samples(tmp_path, arithmetic):
    encoder = tmp_path / "encoder"
    run_clm_diff.main(
        diffusion_flags(
            arithmetic,
            encoder,
            "--masked_lm",
            "--model_type",
            "bert",
            "--config_overrides",
            "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,max_position_embeddings=64",
            "--max_steps",
            "3",
            "--save_strategy",
            "no",
        )
    )
    history = losses_by_step(encoder)
    assert sorted(history) == [1, 2, 3]
    config = json.loads((encoder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["diffusion_config"]["objective"] == "masked_diffusion"
    record = sample_with_cli(encoder, tmp_path, "--block_length", "4")
    assert record["settings"]["sampler"] == "diffusion" and record["nfe"] == 4
    assert len(record["completion"].encode()) <= 4
