"""End to end: run_clm_diff.main --train_diff_model on the bundled corpus trains, lowers the ELBO, resumes."""

import importlib.util
import json
from pathlib import Path

from transformers import AutoModelForCausalLM

from diff_trainer.modeling import read_diffusion_config

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_clm_diff", ROOT / "run_clm_diff.py")
run_clm_diff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_clm_diff)


def log_history(output_dir):
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def test_demo_config_trains_a_diffusion_model_and_resumes(tmp_path):
    out = tmp_path / "diffusion"
    flags = [str(ROOT / "configs" / "demo.yaml"), "--output_dir", str(out),
             "--train_file", str(ROOT / "data/stdlib_docstrings/train.jsonl.zst"),
             "--validation_file", str(ROOT / "data/stdlib_docstrings/validation.jsonl.zst"),
             "--config_overrides", "hidden_size=64,intermediate_size=128,num_hidden_layers=2,num_attention_heads=4,"
             "num_key_value_heads=4,max_position_embeddings=128",
             "--block_size", "128", "--max_train_samples", "400", "--max_eval_samples", "16",
             "--eval_strategy", "steps", "--eval_steps", "30", "--eval_on_start", "true", "--save_steps", "30",
             "--learning_rate", "3e-3", "--warmup_steps", "0", "--disable_tqdm", "true"]
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
