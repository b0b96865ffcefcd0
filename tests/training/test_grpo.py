"""DiffusionGRPOTrainer and run_diffusion_grpo.py: shared masks at learning rate 0 (current = old = reference exactly,
KL 0, loss 0), a training run through the script, bad input before any rollout."""

import json
import os
import subprocess
from collections import defaultdict

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import run_diffusion_grpo  # the repository root is on pytest's pythonpath (setup.cfg)
from conftest import accelerate_launch, make_byte_tokenizer, make_tiny_llama, make_tiny_sedd, save_checkpoint
from diff_trainer.diffusion.policy_losses import wd1_loss
from diff_trainer.diffusion_config import write_diffusion_config
from diff_trainer.training.args.grpo import DiffusionGRPOConfig
from diff_trainer.training.grpo import DiffusionGRPOTrainer
from diff_trainer.training.rewards import load_reward

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBLEMS = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(2)]
# varied rewards, so the advantages are not all 0
DISTINCT = "def distinct(prompts, completions, **kwargs):\n    return [float(len(set(c))) for c in completions]\n"


def diffusion_checkpoint(path, diffusion=True, block_size=None, shift=False):
    """A tiny masked-diffusion checkpoint (causal without `diffusion`, block diffusion of L' = `block_size`)."""
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer), bidirectional=diffusion, max_position_embeddings=32)
    if diffusion:
        write_diffusion_config(
            model.config,
            mask_token_id=tokenizer.mask_token_id,
            shift_logits=shift,
            noise_schedule="linear",
            time_eps=1e-3,
            dff_token="<DFF>",
        )
    if block_size is not None:
        model.config.diffusion_config.update(objective="block", block_size=block_size)
    return str(save_checkpoint(path, model, tokenizer))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    (root / "problems.jsonl").write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    (root / "distinct.py").write_text(DISTINCT)
    return {
        "root": root,
        "problems": str(root / "problems.jsonl"),
        "checkpoint": diffusion_checkpoint(root / "ckpt"),
        "block": diffusion_checkpoint(root / "block", block_size=4),
        "distinct": f"{root / 'distinct.py'}:distinct",
    }


def flags(workspace, output, *extra):
    return [
        "--model_name_or_path",
        workspace["checkpoint"],
        "--train_file",
        workspace["problems"],
        "--output_dir",
        str(workspace["root"] / output),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--num_generations",
        "4",
        "--max_completion_length",
        "4",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--bf16",
        "false",
        "--disable_tqdm",
        "true",
        *extra,
    ]


class RecordingTrainer(DiffusionGRPOTrainer):
    """Keeps every rollout's scores per (generation step, iteration, rollout), from every call: current, old, ref."""

    def __init__(self, *args, **kwargs):
        self.scores = defaultdict(list)
        super().__init__(*args, **kwargs)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, **kwargs
        )
        step, iteration, rollouts = self._mask_context
        for row, rollout in enumerate(rollouts.tolist()):
            self.scores[step, iteration, rollout].append(logps[row].detach().clone())
        return logps, entropies, aux


def recording_trainer(workspace, output_dir, lora=False, checkpoint="checkpoint", **settings):
    """A RecordingTrainer at learning rate 0 on the problems, rewarded by the number of distinct characters."""
    args = DiffusionGRPOConfig(
        output_dir=str(output_dir),
        learning_rate=0.0,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=4,
        mc_samples=2,
        temperature=1.0,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        bf16=False,
        seed=3,
        **settings,
    )
    prompts = Dataset.from_list([{**problem, "prompt": problem["prompt"] + "<DFF>"} for problem in PROBLEMS])
    model = AutoModelForCausalLM.from_pretrained(workspace[checkpoint])
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    return RecordingTrainer(
        model,
        [load_reward(workspace["distinct"])],
        args=args,
        train_dataset=prompts,
        processing_class=make_byte_tokenizer(),
    )


@pytest.mark.parametrize(
    "estimator, lora, checkpoint",
    [
        ("one_step", False, "checkpoint"),
        ("coupled", False, "checkpoint"),
        ("elbo", False, "checkpoint"),
        ("coupled", True, "checkpoint"),  # LoRA: the reference is the policy's ref adapter
        ("one_step", False, "block"),  # block diffusion: block sampler, block objective's forward
        ("coupled", False, "block"),
        ("elbo", False, "block"),  # the block NELBO
    ],
)
def test_learning_rate_zero_scores_every_policy_alike_so_kl_is_zero_and_loss_zero(
    workspace, tmp_path, estimator, lora, checkpoint
):
    trainer = recording_trainer(
        workspace,
        tmp_path,
        lora=lora,
        checkpoint=checkpoint,
        max_steps=2,
        num_iterations=2,
        beta=0.1,
        loss_type="grpo",
        logp_estimator=estimator,
        p_mask_prompt=0.0 if checkpoint == "block" else 0.3,
    )
    trainer.train()

    # one generation (step 0) reused twice: iteration 0 and 1, each scored by old, reference and current
    assert {(step, iteration) for step, iteration, _ in trainer.scores} == {(0, 0), (0, 1)}
    for key, scores in trainer.scores.items():
        assert len(scores) == 3, key
        assert all(torch.equal(scores[0], other) for other in scores[1:]), key
    # different iterations draw different masks (elbo and coupled: different values; one_step: the prompt masks)
    if estimator != "one_step":
        assert not torch.equal(trainer.scores[0, 0, 0][0], trainer.scores[0, 1, 0][0])
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    assert any(entry["reward_std"] > 0 for entry in logs)  # the advantages are not all 0
    for entry in logs:
        assert entry["kl"] == 0.0
        assert entry["clip_ratio/region_mean"] == 0.0
        assert abs(entry["loss"]) < 1e-6  # −mean of group-normalised advantages times ratio 1


@pytest.mark.parametrize("estimator", ["coupled", "elbo"])
def test_wd1_loss_is_the_weighted_likelihood_of_the_group(workspace, tmp_path, estimator):
    trainer = recording_trainer(workspace, tmp_path, max_steps=1, loss_type="wd1", logp_estimator=estimator)
    trainer.train()
    advantages = torch.tensor(list(trainer._logs["advantages"]))
    assert advantages.abs().sum() > 0
    scores = [trainer.scores[0, 0, rollout][0] for rollout in range(4)]
    if estimator == "elbo":  # the ELBO sits at each completion token
        sequences = torch.stack([row[row != 0][0] for row in scores])
    else:  # 0 outside the completion
        sequences = torch.stack([row.sum() for row in scores])
    expected = wd1_loss(sequences, advantages, group_size=4).item()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_one_training_step_through_the_script_writes_a_model(workspace):
    run_diffusion_grpo.main(
        flags(
            workspace,
            "step",
            "--reward_funcs",
            "arithmetic",
            "arithmetic_format",
            "--logp_estimator",
            "coupled",
            "--learning_rate",
            "1e-2",
        )
    )
    output = workspace["root"] / "step"
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    assert {"rewards/arithmetic/mean", "rewards/arithmetic_format/mean", "entropy"} <= set(history[0])
    assert set(load_file(output / "model.safetensors")) >= {"model.embed_tokens.weight"}


@pytest.mark.parametrize("loss_type", ["grpo", "wd1"])
def test_a_step_with_varied_rewards_changes_the_weights(workspace, loss_type):
    run_diffusion_grpo.main(
        flags(
            workspace,
            loss_type,
            "--reward_funcs",
            workspace["distinct"],
            "--loss_type",
            loss_type,
            "--learning_rate",
            "1e-2",
        )
    )
    before = load_file(os.path.join(workspace["checkpoint"], "model.safetensors"))
    after = load_file(workspace["root"] / loss_type / "model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_bad_rewards_stop_before_any_rollout(workspace, monkeypatch):
    monkeypatch.setattr(DiffusionGRPOTrainer, "_generate_single_turn", lambda *args: pytest.fail("rolled out"))
    root = workspace["root"]
    (root / "bad.py").write_text(
        "def raises(prompts, completions, **kwargs):\n    raise KeyError('score')\n"
        "def short(prompts, completions, **kwargs):\n    return [1.0]\n"
    )
    with pytest.raises(ValueError, match=r"reward raises raised KeyError: 'score' \(columns passed: answer\)"):
        run_diffusion_grpo.main(flags(workspace, "bad", "--reward_funcs", f"{root / 'bad.py'}:raises"))
    with pytest.raises(ValueError, match="reward short returned 1 values for 2 completions"):
        run_diffusion_grpo.main(flags(workspace, "bad", "--reward_funcs", f"{root / 'bad.py'}:short"))


def test_long_prompts_and_one_generation_are_refused(workspace, monkeypatch, capsys):
    monkeypatch.setattr(DiffusionGRPOTrainer, "_generate_single_turn", lambda *args: pytest.fail("rolled out"))
    with pytest.raises(
        ValueError,
        match=r"problems.jsonl record 1: a prompt of \d+ tokens plus "
        r"--max_completion_length 30 exceeds the model's context of 32",
    ):
        run_diffusion_grpo.main(flags(workspace, "long", "--max_completion_length", "30"))
    with pytest.raises(SystemExit):
        run_diffusion_grpo.main(flags(workspace, "one", "--num_generations", "1"))
    assert "--num_generations 1: GRPO's advantages compare completions" in capsys.readouterr().err


def test_causal_and_sedd_checkpoints_are_refused(workspace):
    causal = diffusion_checkpoint(workspace["root"] / "causal", diffusion=False)
    with pytest.raises(ValueError, match="causal.* is not a diffusion checkpoint"):
        run_diffusion_grpo.main(flags(workspace, "c", "--model_name_or_path", causal))
    tokenizer = make_byte_tokenizer()
    sedd = str(save_checkpoint(workspace["root"] / "sedd", make_tiny_sedd(tokenizer, "absorb"), tokenizer))
    with pytest.raises(ValueError, match="sedd is a SEDD checkpoint"):
        run_diffusion_grpo.main(flags(workspace, "s", "--model_name_or_path", sedd))


def first_logged_step(output_dir) -> dict:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"][0]


# dapo divides by the completion tokens of the whole batch (every process's), grpo averages per completion
TWO_PROCESS_CASES = [("one_step", "dapo"), ("coupled", "grpo")]


def test_two_processes_give_the_first_step_of_one_process_with_twice_the_batch(workspace):
    """One launch of two processes runs each case (tests/launched_runs.py); each equals one process, batch twice."""

    def settings(estimator, loss_type):
        return [
            *("--reward_funcs", workspace["distinct"], "--logp_estimator", estimator, "--loss_type", loss_type),
            *("--beta", "0.1", "--learning_rate", "1e-2", "--seed", "5"),
        ]

    root = workspace["root"]
    runs = [
        [
            "diff_trainer.cli.grpo",
            flags(workspace, f"ddp_two_{estimator}", "--use_cpu", "true", *settings(estimator, loss)),
        ]
        for estimator, loss in TWO_PROCESS_CASES
    ]
    (root / "runs.json").write_text(json.dumps(runs))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [*accelerate_launch(root), os.path.join(ROOT, "tests", "launched_runs.py"), str(root / "runs.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    for estimator, loss_type in TWO_PROCESS_CASES:
        one = f"ddp_one_{estimator}"
        run_diffusion_grpo.main(
            flags(workspace, one, "--per_device_train_batch_size", "8", *settings(estimator, loss_type))
        )
        single, double = first_logged_step(root / one), first_logged_step(root / f"ddp_two_{estimator}")
        assert double["reward"] == single["reward"] and double["reward_std"] == single["reward_std"]  # same rollouts
        assert single["reward_std"] > 0 and single["grad_norm"] > 0
        assert double["loss"] == pytest.approx(single["loss"], rel=1e-4, abs=1e-7), estimator
        assert double["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4), estimator


def test_block_scores_are_each_row_scored_alone_from_position_zero(workspace, tmp_path):
    # rows of different prompt lengths (TRL pads prompts on the left): blocks are aligned to each row's first token
    trainer = recording_trainer(
        workspace, tmp_path, checkpoint="block", logp_estimator="one_step", p_mask_prompt=0.0, max_steps=1
    )
    tokenizer, model, block = trainer.processing_class, trainer.model, trainer.block
    rows = [
        (tokenizer.encode(p, add_special_tokens=False), tokenizer.encode(c, add_special_tokens=False))
        for p, c in (("3+1=<DFF>", "4"), ("12+30=<DFF>", "42xy"))
    ]
    width_p, width_c = max(len(p) for p, _ in rows), max(len(c) for _, c in rows)
    input_ids = torch.tensor([[0] * (width_p - len(p)) + p + c + [0] * (width_c - len(c)) for p, c in rows])
    attention_mask = torch.tensor(
        [[0] * (width_p - len(p)) + [1] * (len(p) + len(c)) + [0] * (width_c - len(c)) for p, c in rows]
    )
    trainer._mask_context = (0, 0, torch.arange(2))
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, width_c)[0]
    for row, (prompt, completion) in enumerate(rows):
        length = len(prompt) + len(completion)
        clean = torch.tensor([prompt + completion + [block.mask_token_id] * (-length % 4)])
        noisy = clean.clone()
        noisy[0, len(prompt) :] = block.mask_token_id
        padding = (torch.arange(clean.shape[1]) < length).long().unsqueeze(0)
        with torch.no_grad():
            log_probs = torch.log_softmax(block.forward(model, noisy, clean, padding)[0, : clean.shape[1]], dim=-1)
        expected = [log_probs[len(prompt) + k, token].item() for k, token in enumerate(completion)]
        assert logps[row, : len(completion)].tolist() == pytest.approx(expected, abs=1e-5)
        assert logps[row, len(completion) :].abs().sum() == 0


def test_one_step_with_prompt_masks_on_a_block_checkpoint_is_refused(workspace, tmp_path):
    with pytest.raises(ValueError, match="--p_mask_prompt 0.3: a block-diffusion model reads the prompt as the clean"):
        recording_trainer(workspace, tmp_path, checkpoint="block", logp_estimator="one_step", p_mask_prompt=0.3)


def test_prompts_reach_the_sampler_as_training_encoded_them(workspace, tmp_path):
    # TRL's own encoding adds the byte tokenizer's EOS after every prompt; the SFT rows have the answer there
    trainer = recording_trainer(workspace, tmp_path, max_steps=1)
    tokenizer = trainer.processing_class
    prompt_ids, images, fields = trainer._tokenize_prompts(["12+30=<DFF>"])
    assert prompt_ids == [tokenizer.encode("12+30=<DFF>", add_special_tokens=False)]
    assert prompt_ids[0][-1] == tokenizer.convert_tokens_to_ids("<DFF>") and (images, fields) == (None, {})
