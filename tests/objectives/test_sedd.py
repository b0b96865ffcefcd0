"""Score entropy in the Trainer: the loss against masked diffusion (RADD) and a hand computation, end to end runs."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import diff_trainer.models  # noqa: F401  registers DDiT / TimeConditionedLM
from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.diffusion.losses import masked_diffusion_loss
from diff_trainer.diffusion_config import read_diffusion_config
from diff_trainer.models.ddit import DDiTModel
from diff_trainer.models.time_conditioning import TimeConditionedLM
from diff_trainer.objectives.sedd import SeddObjective, prepare_sedd_model
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("run_clm_diff", ROOT / "run_clm_diff.py")
run_clm_diff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_clm_diff)

SETTINGS = dict(
    sedd_noise="loglinear",
    sigma_min=1e-4,
    sigma_max=20.0,
    sedd_scale_by_sigma=False,
    time_eps=1e-3,
    dff_token="<DFF>",
    auto_class="AutoModelForCausalLM",
    masked_lm=False,
)


def clean_batch(vocab: int):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab - 10, (4, 12), generator=generator)
    labels = ids.clone()
    labels[:, :3] = -100  # a prompt
    labels[1, 9:] = -100  # ignored padding
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def test_absorbing_objective_on_a_time_blind_model_is_masked_diffusion():
    """RADD: with loglinear noise, DWDSE of a time-blind model = the 1/t-weighted masked-diffusion loss."""
    tokenizer = make_byte_tokenizer()
    model = prepare_sedd_model(make_tiny_llama(len(tokenizer)), tokenizer, objective="sedd_absorb", **SETTINGS)
    config = read_diffusion_config(model.config)
    assert (config["objective"], config["time_conditioned"], config["mask_token_id"]) == (
        "sedd_absorb",
        False,
        tokenizer.mask_token_id,
    )
    objective = SeddObjective.from_diffusion_config(config, len(tokenizer))
    batch = objective(clean_batch(len(tokenizer)), torch.Generator().manual_seed(1))
    assert torch.equal(batch["masked"], batch["input_ids"] == tokenizer.mask_token_id)
    assert not batch["masked"][~batch["maskable"]].any()
    for normalization in ("llada_sft", "token", "masked", "llada_pretrain"):
        loss, _ = objective.loss(model, batch, normalization)
        logits = model(input_ids=batch["input_ids"]).logits.clone()
        logits[..., tokenizer.mask_token_id] = float("-inf")  # RADD never predicts MASK
        t = -torch.expm1(-batch["sigma"]) / (1 - 1e-3)  # 1 − e^(−σ̄) = (1 − ε)t for loglinear noise
        expected = masked_diffusion_loss(
            logits, batch["clean_ids"], batch["masked"], batch["maskable"], 1 / t, normalization
        )  # σ̄'/(e^σ̄ − 1) = 1/t
        assert torch.allclose(loss, expected, rtol=1e-5), normalization


def test_uniform_objective_loss_by_hand():
    """σ̄'(t) · Σ_trainable ℓ_i per row, / number of trainable tokens ("token"), with ℓ from the graph."""
    tokenizer = make_byte_tokenizer()
    lm = make_tiny_llama(len(tokenizer))
    model = prepare_sedd_model(lm, tokenizer, objective="sedd_uniform", **{**SETTINGS, "sedd_noise": "geometric"})
    assert isinstance(model, TimeConditionedLM) and model.lm is lm
    objective = SeddObjective.from_diffusion_config(read_diffusion_config(model.config), len(tokenizer))
    batch = objective(clean_batch(len(tokenizer)), torch.Generator().manual_seed(2))
    assert batch["masked"].any() and not batch["masked"][~batch["maskable"]].any()
    loss, log_score = objective.loss(model, batch, "token")
    n = len(tokenizer)
    total = 0.0
    for b in range(4):
        sigma, rate = float(batch["sigma"][b]), float(batch["loss_weight"][b])
        assert rate == pytest.approx(sigma * torch.log(torch.tensor(20.0 / 1e-4)).item(), rel=1e-5)  # geometric
        for i in range(12):
            if not batch["maskable"][b, i]:
                continue
            s = log_score[b, i].detach().double()
            xt, x0 = int(batch["input_ids"][b, i]), int(batch["clean_ids"][b, i])
            # ℓ = Σ_(y≠x_t) (1/N) [e^(s_y) − a_y s_y + a_y(log a_y − 1)], a_y = p_t(y|x0) / p_t(x_t|x0)
            keep = torch.exp(-torch.tensor(sigma, dtype=torch.float64))
            p = torch.full((n,), (1 - keep) / n, dtype=torch.float64)
            p[x0] += keep
            a = p / p[xt]
            term = (s.exp() - a * s + a * (a.log() - 1)) / n
            term[xt] = 0
            total += rate * float(term.sum())
    assert float(loss.detach()) == pytest.approx(total / int(batch["maskable"].sum()), rel=1e-4)


def test_prepare_errors():
    tokenizer = make_byte_tokenizer()
    with pytest.raises(ValueError, match="absorbing graph only"):
        prepare_sedd_model(
            make_tiny_llama(len(tokenizer)),
            tokenizer,
            objective="sedd_uniform",
            **{**SETTINGS, "sedd_scale_by_sigma": True},
        )
    with pytest.raises(ValueError, match="--masked_lm encoders cannot be wrapped"):
        prepare_sedd_model(
            make_tiny_llama(len(tokenizer)), tokenizer, objective="sedd_uniform", **{**SETTINGS, "masked_lm": True}
        )


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--diffusion_objective", "sedd_uniform"], "add --train_diff_model"),
        (["--train_diff_model", "--sedd_noise", "geometric"], "only apply with --diffusion_objective"),
        (
            ["--train_diff_model", "--diffusion_objective", "sedd_absorb", "--shift_logits"],
            "belong to masked diffusion",
        ),
        (["--train_diff_model", "--diffusion_objective", "score"], "--diffusion_objective must be"),
    ],
)
def test_argument_errors(flags, message, tmp_path):
    from transformers import HfArgumentParser

    with pytest.raises(ValueError, match=message):
        HfArgumentParser(DiffusionTrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), *flags]
        )


def run_flags(out, objective, *extra):
    return [
        str(ROOT / "configs" / "demo.yaml"),
        "--output_dir",
        str(out),
        "--train_file",
        str(ROOT / "data/stdlib_docstrings/train.jsonl.zst"),
        "--validation_file",
        str(ROOT / "data/stdlib_docstrings/validation.jsonl.zst"),
        "--diffusion_objective",
        objective,
        "--block_size",
        "64",
        "--max_train_samples",
        "64",
        "--max_eval_samples",
        "8",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--max_steps",
        "3",
        "--eval_mc_samples",
        "2",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def test_ddit_sedd_uniform_trains_evaluates_and_samples(tmp_path, capsys):
    out = tmp_path / "ddit"
    run_clm_diff.main(
        run_flags(
            out,
            "sedd_uniform",
            "--model_type",
            "ddit",
            "--sedd_noise",
            "geometric",
            "--config_overrides",
            "hidden_size=32,cond_dim=16,num_hidden_layers=1,num_attention_heads=4,max_position_embeddings=64",
        )
    )
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_elbo_nll"] > 0 and metrics["eval_elbo_perplexity"] > 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, DDiTModel)
    config = read_diffusion_config(model.config)
    assert (config["objective"], config["noise"], config["time_conditioned"]) == ("sedd_uniform", "geometric", True)
    from diff_trainer.cli import generate

    generate.main(["--model", str(out), "--prompt", "def ", "--gen_length", "8", "--steps", "4", "--seed", "0"])
    assert capsys.readouterr().out.strip()
    from diff_trainer.models.loading import load_tokenizer
    from diff_trainer.training.args.model import ModelArguments
    from diff_trainer.training.model import prepare_model

    model_args = ModelArguments(model_name_or_path=str(out))
    with pytest.raises(ValueError, match="VRPO / DPO is defined here for masked- and block-diffusion ELBOs only"):
        prepare_model(model_args, load_tokenizer(model_args), "diffusion")  # what run_diffusion_dpo.py does


def test_llama_sedd_absorb_scale_by_sigma_is_wrapped(tmp_path):
    out = tmp_path / "llama"
    run_clm_diff.main(
        run_flags(
            out,
            "sedd_absorb",
            "--sedd_scale_by_sigma",
            "--config_overrides",
            "hidden_size=32,intermediate_size=64,num_hidden_layers=1,num_attention_heads=4,"
            "num_key_value_heads=4,max_position_embeddings=64",
        )
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, TimeConditionedLM) and model.config.scale_by_sigma
    assert read_diffusion_config(model.config)["objective"] == "sedd_absorb"


@pytest.mark.parametrize("objective", ["sedd_absorb", "sedd_uniform"])
def test_a_few_steps_lower_the_dwdse_bound(objective):
    """The loss trains: 40 Adam steps on one short corpus lower the held-out DWDSE bound of a tiny DDiT."""
    from diff_trainer.models.ddit import DDiTConfig

    torch.manual_seed(0)
    tokenizer = make_byte_tokenizer()
    model = DDiTModel(
        DDiTConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            cond_dim=16,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=32,
            dropout=0.0,
        )
    )
    model = prepare_sedd_model(model, tokenizer, objective=objective, **SETTINGS)
    objective_ = SeddObjective.from_diffusion_config(read_diffusion_config(model.config), len(tokenizer))
    ids = torch.tensor([tokenizer.encode("abababababababab", add_special_tokens=False)] * 8)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}

    def bound():
        with torch.no_grad():
            return (
                float(
                    objective_.elbo_nll(
                        model.eval(),
                        ids[:2],
                        batch["attention_mask"][:2],
                        torch.ones_like(ids[:2], dtype=torch.bool),
                        16,
                        torch.Generator().manual_seed(0),
                    ).mean()
                )
                / ids.shape[1]
            )

    before = bound()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(40):
        loss, _ = objective_.loss(model, objective_(batch, generator), "token")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = bound()
    assert after < 0.5 * before, (before, after)
