"""diff_trainer/runner.py: the headline metric a run ends with, and the refusal to overwrite a trained model."""

from types import SimpleNamespace

import pytest

from diff_trainer.training.runner import check_output_dir, headline


def test_headline_is_the_comparable_metric_of_each_kind_of_run():
    diffusion = {"eval_loss": 1.234, "eval_accuracy": 0.4, "eval_elbo_nll": 3.0884, "eval_elbo_perplexity": 21.94}
    assert headline(diffusion).startswith("eval_elbo_perplexity = 21.94: ELBO perplexity bound")
    assert "not compare it with a causal eval_loss" in headline(diffusion)
    assert headline({"eval_loss": 2.5, "perplexity": 12.18249}).startswith("perplexity = 12.18: perplexity")
    assert headline({"eval_loss": 0.6, "eval_rewards/accuracies": 0.75}).startswith("eval_rewards/accuracies = 0.75")
    assert headline({"eval_loss": 0.6}) is None


def arguments(output_dir, do_train=True, resume=False, overwrite=False):
    return SimpleNamespace(output_dir=str(output_dir), do_train=do_train, resume=resume, resume_from_checkpoint=None,
                           overwrite_output_dir=overwrite, process_index=0)


def test_output_dir_check(tmp_path):
    check_output_dir(arguments(tmp_path / "missing"))
    (tmp_path / "logs.txt").write_text("not a model")
    check_output_dir(arguments(tmp_path))
    (tmp_path / "checkpoint-10").mkdir()
    with pytest.raises(ValueError, match="checkpoint-10"):
        check_output_dir(arguments(tmp_path))
    check_output_dir(arguments(tmp_path, resume=True))
    check_output_dir(arguments(tmp_path, do_train=False))
    check_output_dir(arguments(tmp_path, overwrite=True))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["logs.txt"]
