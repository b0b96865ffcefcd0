"""Argument parsing: a yaml/json config file first, command-line flags after it win; bad flags stop the parser."""

import json

import pytest
import yaml

from diff_trainer.training.args.data import DataArguments, PreferenceDataArguments
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
from diff_trainer.training.args.dpo import DPOTrainingArguments
from diff_trainer.training.args.model import ModelArguments
from diff_trainer.training.args.parsing import config_to_argv, parse_arguments

TYPES = (ModelArguments, DataArguments, DiffusionTrainingArguments)

CONFIG = {
    "model_type": "llama",
    "tokenizer_name": "byte",
    "train_file": "data/train.jsonl",
    "block_size": 128,
    "use_lora": True,
    "lora_target_modules": ["q_proj", "v_proj"],
    "train_diff_model": True,
    "noise_schedule": "cosine",
    "learning_rate": 3e-4,
    "report_to": "none",
    "use_cpu": True,
    "lr_scheduler_kwargs": {"min_lr": 1e-5},
    "dataset_config_name": None,
}


def write_config(tmp_path, suffix, values=CONFIG):
    path = tmp_path / f"config{suffix}"
    values = {**values, "output_dir": str(tmp_path / "out")}
    path.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values))
    return str(path)


def parse(argv):
    return parse_arguments(TYPES, argv)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_config_file_values_are_applied(tmp_path, suffix):
    model, data, training = parse([write_config(tmp_path, suffix)])
    assert (model.model_type, model.tokenizer_name) == ("llama", "byte")
    assert data.block_size == 128 and data.train_file == "data/train.jsonl"
    assert model.use_lora is True
    assert model.lora_target_modules == ["q_proj", "v_proj"]
    assert training.train_diff_model is True and training.noise_schedule == "cosine"
    assert training.learning_rate == pytest.approx(3e-4)
    assert training.lr_scheduler_kwargs == {"min_lr": 1e-5}
    assert training.output_dir == str(tmp_path / "out")
    # a null value in the file leaves the default
    assert data.dataset_config_name is None


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_command_line_after_the_file_wins(tmp_path, suffix):
    argv = [
        write_config(tmp_path, suffix),
        "--block_size",
        "64",
        "--use_lora",
        "false",
        "--lora_target_modules",
        "o_proj",
        "--noise_schedule",
        "linear",
        "--learning_rate",
        "1e-3",
    ]
    model, data, training = parse(argv)
    assert data.block_size == 64
    assert model.use_lora is False
    assert model.lora_target_modules == ["o_proj"]
    assert training.noise_schedule == "linear"
    assert training.learning_rate == pytest.approx(1e-3)
    # untouched values still come from the file
    assert model.model_type == "llama" and training.train_diff_model is True


def test_bare_bool_flag_sets_true_and_false_values_are_written_out(tmp_path):
    config = write_config(tmp_path, ".yaml", {"train_file": "x.jsonl", "concatenate_texts": False})
    assert "false" in config_to_argv(config)
    _, data, _ = parse([config, "--concatenate_texts"])
    assert data.concatenate_texts is True


def test_save_final_dataset_bare_flag_and_value(tmp_path):
    out = ["--output_dir", str(tmp_path)]
    assert parse(out + ["--save_final_dataset"])[1].save_final_dataset == "final_dataset"
    assert parse(out + ["--save_final_dataset", "mine"])[1].save_final_dataset == "mine"
    assert parse(out)[1].save_final_dataset is None


def test_without_config_file_flags_alone(tmp_path):
    model, data, _ = parse(["--output_dir", str(tmp_path), "--tokenizer_name", "byte", "--block_size", "32"])
    assert model.tokenizer_name == "byte" and data.block_size == 32


def test_argv_defaults_to_sys_argv(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["run_clm_diff.py", write_config(tmp_path, ".yaml"), "--block_size", "16"])
    assert parse(None)[1].block_size == 16


def test_unknown_flag_exits_with_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse(["--output_dir", str(tmp_path), "--no_such_flag", "1"])
    assert stopped.value.code == 2
    assert "unrecognized arguments: --no_such_flag 1" in capsys.readouterr().err


def test_unknown_key_in_config_file_exits(tmp_path):
    with pytest.raises(SystemExit):
        parse([write_config(tmp_path, ".yaml", {"blocksize": 8})])


def test_removed_transformers4_flag_is_refused(tmp_path):
    # (--overwrite_output_dir is this project's own flag again: consent to replace a trained model)
    with pytest.raises(SystemExit):
        parse(["--output_dir", str(tmp_path), "--logging_dir", str(tmp_path)])


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse([str(tmp_path / "nope.yaml")])
    assert stopped.value.code == 2 and "nope.yaml does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["- block_size\n- 8\n", "block_size: [8\n"])
def test_config_file_must_be_a_mapping(tmp_path, capsys, content):
    path = tmp_path / "config.yaml"
    path.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        parse([str(path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 2 and f"{path}: not a valid config file: " in err
    assert "mapping of flag names" in err or "line 2, column 1" in err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"padding_side": "middle"}, "--padding_side must be"),
        ({"prompt_column": "prompt"}, "must be given together"),
        ({"load_from_disk": True}, "--load_from_disk needs --dataset_name"),
        ({"dff_labels": "maybe"}, "--dff_labels must be auto, on or off"),
    ],
)
def test_data_argument_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataArguments(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_diff_model": True, "loss_normalization": "mean"}, "--loss_normalization must be one of"),
        ({"train_diff_model": True, "prompt_dropout": 1.5}, r"probabilities in \[0, 1\]"),
        (
            {"shift_logits": True, "prompt_dropout": 0.1},
            "--shift_logits --prompt_dropout only apply with --train_diff_model",
        ),
        ({"isolate_documents": True}, "--isolate_documents only apply with --train_diff_model"),
        ({"masked_head": False}, "--masked_head only apply with --train_diff_model"),
    ],
)
def test_diffusion_argument_checks(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiffusionTrainingArguments(output_dir=str(tmp_path), **kwargs)


def test_diffusion_flags_accepted_with_train_diff_model(tmp_path):
    args = DiffusionTrainingArguments(
        output_dir=str(tmp_path), train_diff_model=True, shift_logits=True, loss_normalization="masked", time_eps=0.01
    )
    assert args.shift_logits and args.loss_normalization == "masked"
    assert args.diffusion_settings() == {"shift_logits": True, "noise_schedule": "linear", "time_eps": 0.01}


def test_a_causal_run_names_the_diffusion_settings_it_does_not_use(tmp_path, caplog):
    """A causal twin from a diffusion config (--train_diff_model false): changed diffusion settings are logged."""
    with caplog.at_level("WARNING", logger="diff_trainer.training.args.diffusion"):
        DiffusionTrainingArguments(output_dir=str(tmp_path), time_eps=0.1, eval_mc_samples=0, eval_mask_seed=1234)
    (record,) = caplog.records
    assert record.getMessage() == (
        "A causal run (no --train_diff_model) does not use the diffusion settings --time_eps 0.1, --eval_mc_samples 0."
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="diff_trainer.training.args.diffusion"):
        DiffusionTrainingArguments(output_dir=str(tmp_path))
        DiffusionTrainingArguments(output_dir=str(tmp_path), train_diff_model=True, time_eps=0.1)
    assert caplog.records == []


def test_each_group_holds_its_own_flags(tmp_path):
    """The flags that moved keep their names: --dff_token and --dff_labels are data, --masked_lm model, --resume run."""
    model, data, training = parse(
        [
            "--output_dir",
            str(tmp_path),
            "--dff_token",
            "<SEP>",
            "--dff_labels",
            "off",
            "--masked_lm",
            "--resume",
            "--train_diff_model",
        ]
    )
    assert (data.dff_token, data.dff_labels, model.masked_lm, training.resume) == ("<SEP>", "off", True, True)


def test_data_source_fields_are_shared_with_their_own_defaults():
    shared = ("dataset_name", "train_file", "load_from_disk", "max_train_samples", "save_final_dataset", "dff_token")
    assert all(
        name in DataArguments.__dataclass_fields__ and name in PreferenceDataArguments.__dataclass_fields__
        for name in shared
    )
    assert DataArguments().validation_split_percentage == 5
    assert PreferenceDataArguments().validation_split_percentage == 0
    with pytest.raises(ValueError, match="--load_from_disk needs --dataset_name"):
        PreferenceDataArguments(load_from_disk=True)


def test_dpo_settings_are_training_arguments(tmp_path):
    args = DPOTrainingArguments(output_dir=str(tmp_path), beta=0.5, mc_samples=2, learning_rate=1e-4)
    assert (args.beta, args.mc_samples, args.learning_rate) == (0.5, 2, 1e-4)
    with pytest.raises(ValueError, match="--mc_samples must be >= 1"):
        DPOTrainingArguments(output_dir=str(tmp_path), mc_samples=0)
