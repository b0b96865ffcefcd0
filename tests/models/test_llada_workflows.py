"""The project's workflows on a tiny LLaDA (real vocabulary and special ids): SFT with LoRA by target name and
gradient checkpointing, VRPO, diff-generate (released layout and converted), gradient checkpointing and bf16."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import run_clm_diff  # the repository root is on pytest's pythonpath (setup.cfg)
import run_diffusion_dpo
from diff_trainer.cli import generate
from diff_trainer.diffusion.losses import masked_token_losses
from diff_trainer.models.conversion import LLADA_LOADER, convert_checkpoint
from models.published_layouts import ON_CPU

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RECORDS = [{"text": f"{a}+{b}=<DFF>{a + b}"} for a in range(6) for b in range(4)]
PAIRS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a in range(4) for b in range(2)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, llada_checkpoint):
    root = tmp_path_factory.mktemp("llada_runs")
    for name, rows in (("sft.jsonl", RECORDS), ("pairs.jsonl", PAIRS)):
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    converted = convert_checkpoint(llada_checkpoint[0], root / "converted", dtype="float32").output_dir
    return {"root": root, "released": str(llada_checkpoint[0]), "converted": str(converted)}


def training_flags(output, *extra):
    return [
        "--output_dir",
        str(output),
        "--do_train",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "0.01",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--use_cpu",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        *extra,
    ]


def test_llada_8b_sft_config_trains_lora_by_target_name_with_checkpointing(workspace, monkeypatch):
    monkeypatch.chdir(ROOT)
    output = workspace["root"] / "sft"
    data = str(workspace["root"] / "sft.jsonl")
    run_clm_diff.main(
        [
            "configs/llada_8b_sft.yaml",
            *ON_CPU,
            "--model_name_or_path",
            workspace["converted"],
            "--train_file",
            data,
            "--validation_file",
            data,
            "--block_size",
            "16",
            "--output_dir",
            str(output),
        ]
    )
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(LORA_TARGETS)
    weights = load_file(str(output / "adapter_model.safetensors"))
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert len(lora_b) == 2 * len(LORA_TARGETS) and all(tensor.abs().sum() > 0 for tensor in lora_b)  # trained
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.mask_token_id == 126336
    assert tokenizer.convert_tokens_to_ids("<DFF>") == 126349  # next free id, inside the 126464 rows: no resize


def test_bf16_sft_from_the_released_layout_keeps_mask_and_stop_ids(workspace, monkeypatch):
    monkeypatch.chdir(ROOT)
    output = workspace["root"] / "sft_full"
    run_clm_diff.main(
        training_flags(
            output,
            "--model_name_or_path",
            workspace["released"],
            "--train_file",
            str(workspace["root"] / "sft.jsonl"),
            "--train_diff_model",
            "--block_size",
            "16",
            "--padding_side",
            "right",
            "--validation_split_percentage",
            "0",
            "--dtype",
            "bfloat16",
            "--bf16",
            "true",
        )
    )
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and math.isfinite(state["log_history"][-1]["train_loss"])
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 126464 and config["dtype"] == "bfloat16"
    assert config["diffusion_config"] | {"dff_token": None} == {
        "objective": "masked_diffusion",
        "mask_token_id": 126336,
        "shift_logits": False,
        "noise_schedule": "linear",
        "time_eps": 0.001,
        "dff_token": None,
        "auto_class": "AutoModelForCausalLM",
        "row_packing": "right",
        "eos_token_ids": [126081, 126348],
    }
    assert config["diffusion_config"]["dff_token"] == "<DFF>"


def test_llada_8b_dpo_config_runs_vrpo_on_the_released_layout(workspace, monkeypatch):
    monkeypatch.chdir(ROOT)
    output = workspace["root"] / "dpo"
    pairs = str(workspace["root"] / "pairs.jsonl")
    run_diffusion_dpo.main(
        [
            "configs/llada_8b_dpo.yaml",
            *ON_CPU,
            "--model_name_or_path",
            workspace["released"],
            "--train_file",
            pairs,
            "--validation_file",
            pairs,
            "--max_steps",
            "1",
            "--logging_steps",
            "1",
            "--mc_samples",
            "2",
            "--max_length",
            "12",
            "--max_prompt_length",
            "6",
            "--output_dir",
            str(output),
        ]
    )
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    first = next(log for log in history if "loss" in log)
    # at the start the policy is the reference: rewards are 0 and the loss is log 2 + sft_weight (0.05) x SFT loss
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert first["loss"] == pytest.approx(math.log(2) + 0.05 * first["sft_loss"], abs=2e-3)


@pytest.mark.parametrize("which", ["released", "converted"])
def test_diff_generate_reads_mask_and_both_stop_ids(workspace, which, tmp_path):
    output = tmp_path / "out.jsonl"
    generate.main(
        [
            "--model",
            workspace[which],
            "--prompt",
            "1+2=",
            "--prompt",
            "3+3=",
            "--gen_length",
            "8",
            "--steps",
            "4",
            "--block_length",
            "4",
            "--seed",
            "0",
            "--output",
            str(output),
        ]
    )
    records = [json.loads(line) for line in output.read_text().splitlines()]
    settings = records[0]["settings"]
    assert (settings["mask_token_id"], settings["shift"], settings["eos_token_id"]) == (126336, False, [126081, 126348])
    assert len(records) == 2 and all(r["nfe"] <= 4 for r in records)


@pytest.mark.parametrize("which", ["released", "converted"])
def test_the_harness_and_diff_generate_build_equal_sampler_settings(workspace, which):
    """Both build their settings with sampling.settings.sampler_for: the harness also stops at the recorded
    end-of-turn id and never commits the special tokens diff-generate forbids."""
    pytest.importorskip("lm_eval")
    from diff_trainer.eval.harness import DiffusionLM

    parser = generate.build_parser()
    args = parser.parse_args(["--model", workspace[which], "--gen_length", "8", "--steps", "4", "--block_length", "4"])
    model, tokenizer, diffusion_config = generate.load_from_arguments(parser, args)
    command = generate.checked_sampler_config(parser, args, diffusion_config, [[1]], model, tokenizer)
    harness = DiffusionLM(model=model, tokenizer=tokenizer, steps=4, block_length=4).sampler_config(max_gen_toks=8)
    assert harness == command
    assert harness.eos_token_id == (126081, 126348) and harness.forbidden_token_ids
    assert not set(harness.forbidden_token_ids) & {126081, 126348}


def masked_loss(model, ids, masked):
    noisy = ids.masked_fill(masked, 126336)
    losses = masked_token_losses(model(input_ids=noisy).logits, ids, masked, shift=False)
    return losses.sum() / masked.sum()


def test_gradient_checkpointing_gives_the_same_gradients(llada_checkpoint):
    ids = torch.randint(0, 126000, (2, 12), generator=torch.Generator().manual_seed(0))
    masked = torch.rand(2, 12, generator=torch.Generator().manual_seed(1)) < 0.5
    gradients = []
    for checkpointing in (False, True):
        model = LLADA_LOADER.load(llada_checkpoint[0]).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        masked_loss(model, ids, masked).backward()
        gradients.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(gradients[1], gradients[0], atol=1e-6, rtol=1e-5)


def test_bfloat16_training_step_follows_float32(llada_checkpoint):
    ids = torch.randint(0, 126000, (2, 12), generator=torch.Generator().manual_seed(0))
    masked = torch.rand(2, 12, generator=torch.Generator().manual_seed(1)) < 0.5
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = LLADA_LOADER.load(llada_checkpoint[0], dtype=dtype).train()
        loss = masked_loss(model, ids, masked)
        loss.backward()
        assert model.lm_head.weight.grad.dtype == dtype and torch.isfinite(model.lm_head.weight.grad).all()
        losses[dtype] = loss.item()
    assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], rel=0.02)
