"""run_diffusion_dpo.py end to end: config + CLI, LoRA with checkpointing and precomputed scores, bad input, DDP."""

import json
import math
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import run_diffusion_dpo  # the repository root is on pytest's pythonpath (setup.cfg)
from conftest import accelerate_launch, make_byte_tokenizer, make_tiny_llama
from diff_trainer.data.loading import DataError
from diff_trainer.diffusion_config import write_diffusion_config
from diff_trainer.training.dpo import METRIC_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAIRS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 2)} for a in range(3) for b in range(2)]


def save_checkpoint(path, diffusion=True, seed=0):
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer), bidirectional=diffusion, seed=seed, max_position_embeddings=64)
    if diffusion:
        write_diffusion_config(
            model.config,
            mask_token_id=tokenizer.mask_token_id,
            shift_logits=False,
            noise_schedule="linear",
            time_eps=1e-3,
            dff_token="<DFF>",
        )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_run")
    with open(root / "pairs.jsonl", "w") as handle:
        handle.writelines(json.dumps(pair) + "\n" for pair in PAIRS)
    return {
        "root": root,
        "pairs": str(root / "pairs.jsonl"),
        "policy": save_checkpoint(root / "policy"),
        "reference": save_checkpoint(root / "reference", seed=1),
    }


def flags(workspace, output, *extra):
    return [
        "configs/dpo.yaml",
        "--model_name_or_path",
        workspace["policy"],
        "--train_file",
        workspace["pairs"],
        "--validation_file",
        workspace["pairs"],
        "--output_dir",
        str(workspace["root"] / output),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--eval_steps",
        "2",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--mc_samples",
        "2",
        "--max_length",
        "16",
        "--max_prompt_length",
        "8",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def test_config_file_and_cli_overrides_train_evaluate_and_log_dpo_metrics(workspace, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_diffusion_dpo.main(flags(workspace, "full"))
    output = workspace["root"] / "full"
    history = read_json(output / "trainer_state.json")["log_history"]
    train_logs = [log for log in history if "loss" in log]
    assert len(train_logs) == 2 and all(name in log for log in train_logs for name in METRIC_NAMES)
    evaluation = read_json(output / "eval_results.json")
    assert all(f"eval_{name}" in evaluation for name in METRIC_NAMES)
    assert read_json(output / "config.json")["diffusion_config"]["mask_token_id"] == make_byte_tokenizer().mask_token_id


def test_lora_with_checkpointing_and_precomputed_scores_saved_for_reuse(workspace, monkeypatch):
    monkeypatch.chdir(ROOT)
    saved = workspace["root"] / "pairs_with_scores"
    run_diffusion_dpo.main(
        flags(
            workspace,
            "lora",
            "--use_lora",
            "true",
            "--gradient_checkpointing",
            "true",
            "--precompute_ref_scores",
            "true",
            "--save_final_dataset",
            str(saved),
        )
    )
    adapter = load_file(str(workspace["root"] / "lora" / "adapter_model.safetensors"))
    assert all(weight.abs().max() > 0 for name, weight in adapter.items() if "lora_B" in name)  # gradients flowed
    first = read_json(workspace["root"] / "lora" / "trainer_state.json")["log_history"][0]
    assert first["rewards/margins"] == 0.0  # step 1: LoRA starts as the identity, so policy = reference
    from datasets import load_from_disk

    stored = load_from_disk(str(saved))
    assert {"ref_chosen_score", "ref_rejected_score", "mask_seed"} <= set(stored["train"].column_names)
    # reuse: tokenised pairs and their reference scores are taken as they are, no reference is needed
    run_diffusion_dpo.main(
        flags(
            workspace,
            "reuse",
            "--load_from_disk",
            "true",
            "--dataset_name",
            str(saved),
            "--train_file",
            "",
            "--validation_file",
            "",
            "--precompute_ref_scores",
            "true",
            "--max_steps",
            "1",
            "--do_eval",
            "false",
        )
    )
    assert (workspace["root"] / "reuse" / "model.safetensors").exists()


def test_bad_pairs_are_an_error_naming_file_and_line(workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({**PAIRS[1], "rejected": PAIRS[1]["chosen"]}) + "\n")
    with pytest.raises(DataError, match=rf"{bad}, line 2: chosen == rejected"):
        run_diffusion_dpo.main(flags(workspace, "bad", "--train_file", str(bad), "--invalid_pairs", "error"))


def test_a_causal_checkpoint_is_refused(workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    causal = save_checkpoint(tmp_path / "causal", diffusion=False)
    with pytest.raises(ValueError, match="not a masked-diffusion checkpoint"):
        run_diffusion_dpo.main(flags(workspace, "causal", "--model_name_or_path", causal))


def test_two_process_ddp_matches_one_process(workspace):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}

    def run(launcher, output, batch):
        # precomputed reference scores: gathered from both processes (4 pairs in batches of 4 per process)
        args = flags(
            workspace,
            output,
            "--ref_model_name_or_path",
            workspace["reference"],
            "--max_steps",
            "1",
            "--do_eval",
            "false",
            "--per_device_train_batch_size",
            str(batch),
            "--max_train_samples",
            "4",
            "--learning_rate",
            "0.01",
            "--precompute_ref_scores",
            "true",
        )
        done = subprocess.run(
            [*launcher, "run_diffusion_dpo.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return read_json(workspace["root"] / output / "trainer_state.json")["log_history"][0]

    single = run([sys.executable], "one", 4)
    ddp = run(accelerate_launch(workspace["root"]), "two", 2)
    for name in ("loss", "grad_norm", *METRIC_NAMES):
        assert ddp[name] == pytest.approx(single[name], rel=1e-4, abs=1e-6), name
    assert single["rewards/margins"] != 0.0  # the reference differs from the policy, so the step is informative


def test_without_do_train_or_do_eval_it_says_what_was_done(workspace, monkeypatch, caplog):
    monkeypatch.chdir(ROOT)
    output = workspace["root"] / "nothing"
    with caplog.at_level("INFO", logger="diff_trainer"):
        run_diffusion_dpo.main(
            flags(workspace, "nothing", "--do_train", "false", "--do_eval", "false", "--eval_strategy", "no")
        )
    assert (
        "Neither --do_train nor --do_eval: tokenised 6 train, 6 validation pairs; nothing trained or evaluated"
        in caplog.text
    )
    assert not (output / "trainer_state.json").exists()


@pytest.mark.parametrize("disable", [True, False])
def test_disable_dropout_and_custom_column_names(workspace, monkeypatch, tmp_path, disable):
    # policy = reference and shared masks: without dropout the first step's scores agree exactly, so the margin is 0
    # and the loss is -log σ(0) = log 2; dropout in the training policy breaks the tie.
    monkeypatch.chdir(ROOT)
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(
        "".join(json.dumps({"question": p["prompt"], "good": p["chosen"], "bad": p["rejected"]}) + "\n" for p in PAIRS)
    )
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer), max_position_embeddings=64, attention_dropout=0.5)
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token="<DFF>",
    )
    model.save_pretrained(tmp_path / "dropout_policy")
    tokenizer.save_pretrained(tmp_path / "dropout_policy")
    output = tmp_path / "out"
    run_diffusion_dpo.main(
        flags(
            workspace,
            "unused",
            "--model_name_or_path",
            str(tmp_path / "dropout_policy"),
            "--train_file",
            str(renamed),
            "--validation_file",
            str(renamed),
            "--prompt_column",
            "question",
            "--chosen_column",
            "good",
            "--rejected_column",
            "bad",
            "--disable_dropout",
            str(disable).lower(),
            "--sft_weight",
            "0",
            "--max_steps",
            "1",
            "--do_eval",
            "false",
            "--output_dir",
            str(output),
        )
    )
    first = read_json(output / "trainer_state.json")["log_history"][0]
    if disable:
        assert first["rewards/margins"] == 0.0 and first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    else:
        assert abs(first["rewards/margins"]) > 1e-3
