"""The GPU path (run with `pytest -m cuda` on a CUDA machine; skipped without one).

Each test runs the same thing on the GPU and on the CPU and compares the numbers: bf16 training + ELBO evaluation,
greedy generation (fp32: identical tokens), DPO with a LoRA reference, and 2-GPU DDP against one GPU.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.cli import generate as cli
from diff_trainer.diffusion_config import write_diffusion_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_LLAMA = (
    "hidden_size=64,intermediate_size=128,num_hidden_layers=2,num_attention_heads=4,"
    "num_key_value_heads=4,max_position_embeddings=64"
)
EVAL_LOSSES = ("eval_loss", "eval_elbo_nll")


def run(command: list[str], gpus: str = "0") -> None:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": gpus,
        "PYTHONPATH": ROOT,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def write_rows(path, count: int = 16) -> None:
    with open(path, "w") as handle:
        for i in range(count):
            handle.write(json.dumps({"text": f"{i}+{i}=<DFF>{2 * i}"}) + "\n")


def diffusion_run(tmp_path, output: str, *device_flags: str) -> list[str]:
    # learning rate 0: both runs evaluate the same weights, so GPU bf16 and CPU fp32 metrics must agree
    return [
        sys.executable,
        "run_clm_diff.py",
        "--train_file",
        str(tmp_path / "rows.jsonl"),
        "--validation_file",
        str(tmp_path / "rows.jsonl"),
        "--model_type",
        "llama",
        "--config_overrides",
        TINY_LLAMA,
        "--tokenizer_name",
        "byte",
        "--block_size",
        "24",
        "--padding_side",
        "right",
        "--train_diff_model",
        "--output_dir",
        str(tmp_path / output),
        "--do_train",
        "--do_eval",
        "--max_steps",
        "2",
        "--learning_rate",
        "0",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--eval_mc_samples",
        "8",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--seed",
        "5",
        *device_flags,
    ]


def test_bf16_diffusion_training_and_elbo_evaluation_on_gpu_match_the_cpu(tmp_path):
    write_rows(tmp_path / "rows.jsonl")
    run(diffusion_run(tmp_path, "gpu", "--bf16", "true"))
    run(diffusion_run(tmp_path, "cpu", "--use_cpu", "true"), gpus="")
    gpu, cpu = (read_json(tmp_path / name / "eval_results.json") for name in ("gpu", "cpu"))
    for metric in EVAL_LOSSES:
        assert gpu[metric] == pytest.approx(cpu[metric], rel=3e-2), metric  # bf16 autocast vs fp32
    # accuracy over ~160 masked tokens of a random model: bf16 may flip a near-tie or two
    assert gpu["eval_accuracy"] == pytest.approx(cpu["eval_accuracy"], abs=0.02)
    train_gpu, train_cpu = (read_json(tmp_path / name / "train_results.json") for name in ("gpu", "cpu"))
    assert train_gpu["train_loss"] == pytest.approx(train_cpu["train_loss"], rel=3e-2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Diffusion and causal checkpoints of a tiny fp32 Llama."""
    root = tmp_path_factory.mktemp("cuda_checkpoints")
    tokenizer = make_byte_tokenizer()
    diffusion, causal = make_tiny_llama(len(tokenizer)), make_tiny_llama(len(tokenizer), bidirectional=False)
    write_diffusion_config(
        diffusion.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token="<DFF>",
    )
    for name, model in (("diffusion", diffusion), ("causal", causal)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.mark.parametrize(
    "name, sampler_flags",
    [
        ("diffusion", ["--steps", "16", "--block_length", "8"]),
        ("diffusion", ["--threshold", "0.9"]),
        ("causal", []),
    ],
)
def test_greedy_generation_on_gpu_equals_the_cpu(checkpoints, tmp_path, name, sampler_flags):
    outputs = {}
    for device in ("cpu", "cuda"):
        path = tmp_path / f"{device}.jsonl"
        cli.main(
            [
                "--model",
                str(checkpoints / name),
                "--prompt",
                "12+7=",
                "--prompt",
                "def f(x):",
                "--gen_length",
                "16",
                "--temperature",
                "0",
                "--device",
                device,
                "--dtype",
                "float32",
                "--output",
                str(path),
                *sampler_flags,
            ]
        )
        outputs[device] = [(record["completion"], record["nfe"]) for record in map(json.loads, path.open())]
    assert outputs["cuda"] == outputs["cpu"]


def test_checkpoint_loads_on_the_gpu_in_its_dtype(checkpoints, tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["--model", str(checkpoints / "diffusion"), "--prompt", "x", "--dtype", "bfloat16"])
    model, _, _ = cli.load_from_arguments(parser, args)
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16  # --device auto picks the GPU
    path = tmp_path / "bf16.jsonl"
    cli.main(
        [
            "--model",
            str(checkpoints / "diffusion"),
            "--prompt",
            "12+7=",
            "--gen_length",
            "8",
            "--dtype",
            "bfloat16",
            "--temperature",
            "1",
            "--seed",
            "0",
            "--output",
            str(path),
        ]
    )
    again = tmp_path / "again.jsonl"
    cli.main(
        [
            "--model",
            str(checkpoints / "diffusion"),
            "--prompt",
            "12+7=",
            "--gen_length",
            "8",
            "--dtype",
            "bfloat16",
            "--temperature",
            "1",
            "--seed",
            "0",
            "--output",
            str(again),
        ]
    )
    assert path.read_text() == again.read_text()  # a seed repeats on the GPU too


def dpo_run(root, output: str, *device_flags: str) -> list[str]:
    return [
        sys.executable,
        "run_diffusion_dpo.py",
        "configs/dpo.yaml",
        "--model_name_or_path",
        str(root / "diffusion"),
        "--train_file",
        str(root / "pairs.jsonl"),
        "--validation_file",
        str(root / "pairs.jsonl"),
        "--output_dir",
        str(root / output),
        "--use_lora",
        "true",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--mc_samples",
        "4",
        "--max_length",
        "16",
        "--max_prompt_length",
        "8",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--learning_rate",
        "0.01",
        "--warmup_steps",
        "0",
        "--seed",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *device_flags,
    ]


def test_dpo_with_lora_reference_on_gpu_matches_the_cpu(checkpoints):
    with open(checkpoints / "pairs.jsonl", "w") as handle:
        for a in range(4):
            handle.write(json.dumps({"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": str(a + 3)}) + "\n")
    run(dpo_run(checkpoints, "dpo_gpu", "--bf16", "true"))
    run(dpo_run(checkpoints, "dpo_cpu", "--use_cpu", "true"), gpus="")
    first_gpu, first_cpu = (
        read_json(checkpoints / name / "trainer_state.json")["log_history"][0] for name in ("dpo_gpu", "dpo_cpu")
    )
    # step 1: LoRA's B = 0, so the policy is its reference: rewards 0 (exactly in fp32; to bf16 rounding of the
    # ELBO scores on the GPU, where the policy's pass with gradients may take other attention kernels)
    assert first_cpu["rewards/chosen"] == 0 and first_cpu["rewards/rejected"] == 0
    for side in ("chosen", "rejected"):
        assert abs(first_gpu[f"rewards/{side}"]) <= 0.2 * 1e-2 * abs(first_gpu[f"logps/{side}"])
    assert first_gpu["loss"] == pytest.approx(first_cpu["loss"], rel=3e-2)
    assert first_gpu["logps/chosen"] == pytest.approx(first_cpu["logps/chosen"], rel=3e-2)
    second_gpu = read_json(checkpoints / "dpo_gpu" / "trainer_state.json")["log_history"][1]
    assert second_gpu["rewards/chosen"] != 0  # the adapters moved the policy away from the reference


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpu_ddp_matches_one_gpu(tmp_path):
    with open(tmp_path / "train.jsonl", "w") as handle:
        for i, length in enumerate([3, 9, 5, 14]):  # 4 rows = exactly one global batch
            handle.write(json.dumps({"text": f"q{i}<DFF>" + "ab" * length}) + "\n")

    def flags(output, per_device_batch):
        # time_eps 1 masks every maskable token, so the loss is deterministic; fp32 for an exact comparison
        return [
            "run_clm_diff.py",
            "--train_file",
            str(tmp_path / "train.jsonl"),
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
            str(tmp_path / output),
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
            "--save_strategy",
            "no",
            "--seed",
            "7",
        ]

    run([sys.executable, *flags("one", 4)])
    run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "--main_process_port",
            "0",
            *flags("two", 2),
        ],
        gpus="0,1",
    )
    losses = {
        name: [log["loss"] for log in read_json(tmp_path / name / "trainer_state.json")["log_history"] if "loss" in log]
        for name in ("one", "two")
    }
    assert losses["two"] == pytest.approx(losses["one"], rel=1e-4)
