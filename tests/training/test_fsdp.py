"""Sharded training (configs/accelerate/): FSDP2 on 2 CPU processes equals one process, resumes, consolidates.

accelerate turns FSDP on only for GPU process groups; `tests/fsdp_on_cpu.py` lets the gloo CPU processes take the
same FSDP2 path (torch's `fully_shard` runs on CPU), with configs/accelerate/fsdp2.yaml as users launch it.
DeepSpeed needs CUDA: its configs are validated by loading them, and runs are skipped without it.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.cli import consolidate as cli
from diff_trainer.diffusion_config import write_diffusion_config
from diff_trainer.training.sharding import SHARDED_WEIGHTS_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs", "accelerate")
TINY_LLAMA = (
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,"
    "num_key_value_heads=4,max_position_embeddings=64"
)
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
ENTRY_POINTS = {"run_clm_diff.py": "diff_trainer.cli.train", "run_diffusion_dpo.py": "diff_trainer.cli.dpo"}
PAIRS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 2)} for a in range(3) for b in range(2)]


def run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def fsdp_launch(directory, *runs: list[str]) -> None:
    """Two CPU processes under configs/accelerate/fsdp2.yaml (fp32: CPU autocast would change the numbers) run each
    of `runs` (a script's name, then its flags) in turn, in one launch (tests/launched_runs.py)."""
    runs_file = os.path.join(str(directory), "runs.json")
    with open(runs_file, "w") as handle:
        json.dump([[ENTRY_POINTS[script], flags] for script, *flags in runs], handle)
    run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            os.path.join(CONFIGS, "fsdp2.yaml"),
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "--main_process_port",
            "0",
            "tests/fsdp_on_cpu.py",
            runs_file,
        ]
    )


def run_in_process(script: str, *flags: str) -> None:
    """One process, in this one: the entry point's `main`."""
    importlib.import_module(ENTRY_POINTS[script]).main(list(flags))


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def log_history(output_dir) -> list[dict]:
    return read_json(os.path.join(output_dir, "trainer_state.json"))["log_history"]


def step_logs(output_dir, *keys) -> list[tuple]:
    return [tuple(log[key] for key in keys) for log in log_history(output_dir) if "loss" in log]


# ------------------------------------------------------------------------------------------------
# Masked-diffusion training


# block diffusion in blocks of 4 (at time_eps 1 every token of every block is masked)
BLOCK_FLAGS = (
    "--diffusion_objective",
    "block",
    "--diffusion_block_size",
    "4",
    "--shift_logits",
    "--padding_side",
    "right",
)


def diffusion_flags(data, output, per_device_batch, *extra):
    # time_eps 1 masks every maskable token, so the losses are deterministic and comparable across runs
    return [
        "run_clm_diff.py",
        "--train_file",
        str(data),
        "--model_type",
        "llama",
        "--config_overrides",
        TINY_LLAMA,
        "--tokenizer_name",
        "byte",
        "--block_size",
        "32",
        "--validation_split_percentage",
        "0",
        "--train_diff_model",
        "--time_eps",
        "1.0",
        "--output_dir",
        str(output),
        "--do_train",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        str(per_device_batch),
        "--learning_rate",
        "0.01",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--use_cpu",
        "--seed",
        "7",
        "--disable_tqdm",
        "true",
        *extra,
    ]


@pytest.fixture(scope="module")
def diffusion_runs(tmp_path_factory):
    """One process (batch 4); FSDP2 on 2 processes (2 each) saving every step; FSDP2 resumed from step 1; block
    diffusion on one process and under FSDP2."""
    root = tmp_path_factory.mktemp("fsdp_diffusion")
    data = root / "train.jsonl"
    with open(data, "w") as handle:
        for i, length in enumerate([3, 9, 5, 14]):  # 4 rows = exactly one global batch
            handle.write(json.dumps({"text": f"q{i}<DFF>" + "ab" * length}) + "\n")
    run_in_process(*diffusion_flags(data, root / "one", 4, "--save_strategy", "no"))
    run_in_process(*diffusion_flags(data, root / "one_block", 4, "--save_strategy", "no", *BLOCK_FLAGS))
    fsdp_launch(
        root,
        diffusion_flags(data, root / "sharded", 2, "--save_strategy", "steps", "--save_steps", "1"),
        # another seed: a run that restarted instead of resuming would start from other weights
        diffusion_flags(
            data,
            root / "resumed",
            2,
            "--save_strategy",
            "no",
            "--seed",
            "8",
            "--resume_from_checkpoint",
            str(root / "sharded" / "checkpoint-1"),
        ),
        diffusion_flags(data, root / "sharded_block", 2, "--save_strategy", "no", *BLOCK_FLAGS),
    )
    return root


def test_fsdp2_diffusion_losses_equal_one_process(diffusion_runs):
    one = step_logs(diffusion_runs / "one", "step", "loss")
    sharded = step_logs(diffusion_runs / "sharded", "step", "loss")
    assert [step for step, _ in sharded] == [1, 2]
    assert [loss for _, loss in sharded] == pytest.approx([loss for _, loss in one], rel=1e-5)
    assert one[0][1] != pytest.approx(one[1][1], rel=1e-3)  # step 2 sees the update, so it checks the gradient too


def test_fsdp2_block_diffusion_losses_equal_one_process(diffusion_runs):
    one = step_logs(diffusion_runs / "one_block", "step", "loss")
    sharded = step_logs(diffusion_runs / "sharded_block", "step", "loss")
    assert [step for step, _ in sharded] == [1, 2]
    assert [loss for _, loss in sharded] == pytest.approx([loss for _, loss in one], rel=1e-5)
    assert one[0][1] != pytest.approx(one[1][1], rel=1e-3)


def test_sharded_saves_hold_shards_config_and_tokenizer(diffusion_runs):
    for directory in (diffusion_runs / "sharded", diffusion_runs / "sharded" / "checkpoint-1"):
        assert sorted(os.listdir(directory / SHARDED_WEIGHTS_DIR)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        config = json.loads((directory / "config.json").read_text())
        assert config["diffusion_config"]["objective"] == "masked_diffusion"
        assert (directory / "tokenizer_config.json").is_file()


def test_consolidated_weights_equal_the_one_process_model(diffusion_runs, tmp_path):
    cli.main([str(diffusion_runs / "sharded"), str(tmp_path / "full")])
    merged, reference = (
        load_file(tmp_path / "full" / "model.safetensors"),
        load_file(diffusion_runs / "one" / "model.safetensors"),
    )
    assert merged.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(merged[name], reference[name], rtol=1e-5, atol=1e-6)
    assert (
        json.loads((tmp_path / "full" / "config.json").read_text())["diffusion_config"]
        == json.loads((diffusion_runs / "one" / "config.json").read_text())["diffusion_config"]
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    assert model.config.is_causal is False and len(AutoTokenizer.from_pretrained(tmp_path / "full")) == 386


def test_sharded_checkpoint_resumes_to_the_same_step_and_weights(diffusion_runs, tmp_path):
    uninterrupted = step_logs(diffusion_runs / "sharded", "step", "loss")
    resumed = step_logs(diffusion_runs / "resumed", "step", "loss")  # step 1 comes from the checkpoint's state
    assert [step for step, _ in resumed] == [1, 2]
    assert resumed[1][1] == pytest.approx(uninterrupted[1][1], rel=1e-6)
    cli.main([str(diffusion_runs / "resumed"), str(tmp_path / "resumed")])
    cli.main([str(diffusion_runs / "sharded"), str(tmp_path / "sharded")])
    resumed_weights, sharded_weights = (
        load_file(tmp_path / name / "model.safetensors") for name in ("resumed", "sharded")
    )
    for name in sharded_weights:
        torch.testing.assert_close(resumed_weights[name], sharded_weights[name], rtol=1e-6, atol=1e-7)


def test_consolidate_refuses_what_it_cannot_merge(diffusion_runs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main([str(diffusion_runs / "one"), str(tmp_path / "out")])
    assert "has no pytorch_model_fsdp_0/: it is not a sharded FSDP save" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit):
        cli.main([str(diffusion_runs / "sharded"), str(tmp_path / "taken")])
    assert "exists: choose another OUT or pass --overwrite" in capsys.readouterr().err
    no_config = tmp_path / "no_config"
    (no_config / SHARDED_WEIGHTS_DIR).mkdir(parents=True)
    with pytest.raises(SystemExit):
        cli.main([str(no_config), str(tmp_path / "out")])
    assert "has shards but no config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# DPO with a reference copy sharded like the policy


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp_dpo")
    with open(root / "pairs.jsonl", "w") as handle:
        handle.writelines(json.dumps(pair) + "\n" for pair in PAIRS)
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer), max_position_embeddings=64)
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token="<DFF>",
    )
    model.save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")

    def flags(output, per_device_batch, *extra):
        return [
            "run_diffusion_dpo.py",
            "configs/dpo.yaml",
            "--model_name_or_path",
            str(root / "policy"),
            "--train_file",
            str(root / "pairs.jsonl"),
            "--validation_file",
            str(root / "pairs.jsonl"),
            "--output_dir",
            str(root / output),
            "--max_steps",
            "2",
            "--eval_strategy",
            "no",
            "--per_device_train_batch_size",
            str(per_device_batch),
            "--per_device_eval_batch_size",
            "3",
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
            "--learning_rate",
            "0.01",
            "--warmup_steps",
            "0",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
            "--use_cpu",
            "--seed",
            "3",
            *extra,
        ]

    run_in_process(*flags("one", 6))
    run_in_process(*flags("one_lora", 6, "--use_lora", "true"))
    fsdp_launch(root, flags("sharded", 3), flags("sharded_lora", 3, "--use_lora", "true"))
    return root


DPO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected")


def test_fsdp2_dpo_losses_and_gathered_metrics_equal_one_process(dpo_runs):
    one, sharded = (step_logs(dpo_runs / name, *DPO_METRICS) for name in ("one", "sharded"))
    assert len(one) == len(sharded) == 2
    for single_step, sharded_step in zip(one, sharded):
        assert sharded_step == pytest.approx(single_step, rel=1e-5, abs=1e-6)
    assert one[1][1] != 0  # at step 2 the policy has moved away from the reference
    assert (dpo_runs / "sharded" / SHARDED_WEIGHTS_DIR).is_dir()  # the run really was sharded
    sharded_eval, single_eval = (
        {
            key: value
            for key, value in read_json(dpo_runs / name / "all_results.json").items()
            if key.startswith("eval_") and "runtime" not in key and "per_second" not in key
        }
        for name in ("sharded", "one")
    )
    assert "eval_rewards/accuracies" in single_eval and sharded_eval.keys() == single_eval.keys()
    for key, value in single_eval.items():
        assert sharded_eval[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_fsdp2_dpo_with_the_lora_reference_equals_one_process_and_consolidates_merged(dpo_runs, tmp_path):
    one, sharded = (step_logs(dpo_runs / name, *DPO_METRICS) for name in ("one_lora", "sharded_lora"))
    assert len(one) == len(sharded) == 2 and one[1][1] != 0
    for single_step, sharded_step in zip(one, sharded):
        assert sharded_step == pytest.approx(single_step, rel=1e-4, abs=1e-6)
    assert (dpo_runs / "sharded_lora" / "adapter_config.json").is_file()
    cli.main([str(dpo_runs / "sharded_lora"), str(tmp_path / "merged")])
    from diff_trainer.models.loading import load_checkpoint

    single, _ = load_checkpoint(str(dpo_runs / "one_lora"), merge_lora=True)  # the adapter merged by peft
    merged, _ = load_checkpoint(str(tmp_path / "merged"))
    base = load_checkpoint(str(dpo_runs / "policy"))[0].state_dict()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert merged.config.diffusion_config == single.config.diffusion_config
    for name, weight in single.state_dict().items():
        # Adam turns reduction-order rounding of near-zero gradients into visible steps: the sharded run's weights
        # may differ by a small part (0.5%) of how far training moved each tensor (~3e-2 here), not by 1e-5 absolute
        moved = (weight - base[name]).abs().max().item()
        torch.testing.assert_close(merged.state_dict()[name], weight, rtol=1e-4, atol=5e-3 * moved)
    assert max((single.state_dict()[name] - base[name]).abs().max() for name in base) > 1e-2  # the LoRA did train


# ------------------------------------------------------------------------------------------------
# The config files


def test_fsdp2_config_is_full_shard_with_block_wrap_checkpointing_bf16_and_sharded_saves():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(CONFIGS, "fsdp2.yaml"))
    assert (config.distributed_type, config.mixed_precision) == ("FSDP", "bf16")
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True  # = FULL_SHARD
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_activation_checkpointing"] is True
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"


# The keys transformers' HfTrainerDeepSpeedConfig fills from TrainingArguments when they say "auto".
TRAINER_FILLED = {
    "bf16.enabled",
    "fp16.enabled",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
}


def auto_keys(config: dict, prefix: str = "") -> set[str]:
    found = set()
    for key, value in config.items():
        if isinstance(value, dict):
            found |= auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            found.add(prefix + key)
    return found


@pytest.mark.parametrize("name, offload", [("zero3", False), ("zero3_offload", True)])
def test_deepspeed_configs_load_as_zero3_and_leave_only_trainer_filled_autos(name, offload):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    config = load_config_from_file(os.path.join(CONFIGS, f"{name}.yaml"))
    assert config.distributed_type == "DEEPSPEED"
    json_file = config.deepspeed_config["deepspeed_config_file"]
    assert json_file == f"configs/accelerate/{name}.json"  # relative to the repository root, where jobs start
    deepspeed = HfDeepSpeedConfig(os.path.join(ROOT, json_file))
    assert deepspeed.is_zero3() and deepspeed.is_offload() is offload
    assert deepspeed.get_value("zero_optimization.stage3_gather_16bit_weights_on_model_save") is True
    assert auto_keys(deepspeed.config) <= TRAINER_FILLED


def test_deepspeed_zero3_diffusion_training_runs_where_deepspeed_can():
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (it needs CUDA for ZeRO-3)")
    if torch.cuda.device_count() < 1:
        pytest.skip("DeepSpeed ZeRO-3 needs a CUDA GPU")
    # one process, so the test runs on a single-GPU machine; the config's sharding is exercised all the same
    run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            os.path.join(CONFIGS, "zero3.yaml"),
            "--num_processes",
            "1",
            "--main_process_port",
            "0",
            "run_clm_diff.py",
            "--model_type",
            "llama",
            "--config_overrides",
            TINY_LLAMA,
            "--tokenizer_name",
            "byte",
            "--train_file",
            os.path.join(ROOT, "data", "stdlib_docstrings", "validation.jsonl.zst"),
            "--max_train_samples",
            "16",
            "--block_size",
            "32",
            "--validation_split_percentage",
            "0",
            "--train_diff_model",
            "--output_dir",
            os.path.join(ROOT, "outputs", "test_zero3"),
            "--do_train",
            "--max_steps",
            "2",
            "--bf16",
            "true",
            "--per_device_train_batch_size",
            "4",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
        ]
    )


@pytest.mark.skipif(not shutil.which("scontrol"), reason="launch.sh's DRY_RUN needs scontrol for the host list")
def test_sbatch_launch_takes_the_sharding_config_from_accelerate_config():
    from test_sbatch import dry_run, split_launch

    per_node = dry_run(
        ["sbatch/launch.sh", "run_diffusion_dpo.py", "configs/dpo.yaml", "--use_lora", "true"],
        ACCELERATE_CONFIG="configs/accelerate/zero3.yaml",
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="gpu-[01-02]",
        SLURM_GPUS_ON_NODE="8",
    )
    for node_id, argv in per_node.items():
        flags, script_args = split_launch(argv, "run_diffusion_dpo.py")
        assert flags["--config_file"] == "configs/accelerate/zero3.yaml"
        assert flags["--num_processes"] == "16" and flags["--machine_rank"] == str(node_id)
        assert "--multi_gpu" not in flags  # the config's distributed type decides
        assert script_args == ["configs/dpo.yaml", "--use_lora", "true"]
