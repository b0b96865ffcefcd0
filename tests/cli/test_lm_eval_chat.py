"""diff-lm-eval --apply_chat_template: the exact strings the model receives, typed from the ChatML format; the stop at
the template's end of turn; one clear error for a checkpoint without a template."""

import importlib.util
import shutil
from pathlib import Path

import datasets
import pytest
import torch

from conftest import make_byte_tokenizer, make_tiny_llama, masked_diffusion_config

pytest.importorskip("lm_eval", reason="needs the [eval] extra: pip install -e '.[eval]'")

from data_scripts.make_arithmetic import make_arithmetic  # noqa: E402
from diff_trainer.cli import lm_eval as cli  # noqa: E402
from diff_trainer.data.chat import set_chat_template  # noqa: E402
from diff_trainer.eval import harness  # noqa: E402
from diff_trainer.sampling.masked import GenerationResult  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "Answer with a number."


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """tasks/, two arithmetic problems (so the one few-shot example of a problem is the other one), and diffusion
    checkpoints saved with and without the ChatML template (as run_clm_diff.py --chat_template chatml saves it)."""
    root = tmp_path_factory.mktemp("lm_eval_chat")
    shutil.copytree(ROOT / "tasks", root / "tasks")
    make_arithmetic(root / "data" / "arithmetic", num_train=0, num_test=2, max_operand=20, operators="+-", seed=1)
    for name, template in (("chat", "chatml"), ("plain", None)):
        tokenizer = make_byte_tokenizer()
        if template:
            set_chat_template(tokenizer, template)
        model = make_tiny_llama(len(tokenizer))
        model.config.diffusion_config = masked_diffusion_config(tokenizer)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    causal_tokenizer = make_byte_tokenizer()
    make_tiny_llama(len(causal_tokenizer), bidirectional=False).save_pretrained(root / "causal")
    causal_tokenizer.save_pretrained(root / "causal")
    return root


def problems(workdir):
    return datasets.load_dataset("json", data_files=str(workdir / "data/arithmetic/test.jsonl"))["train"]


def recorded_requests(monkeypatch, method: str) -> list:
    """Wrap DiffusionLM.`method` so that the arguments of every request it receives are kept in the returned list."""
    seen, original = [], getattr(harness.DiffusionLM, method)

    def recording(self, requests):
        seen.extend(request.args for request in requests)
        return original(self, requests)

    monkeypatch.setattr(harness.DiffusionLM, method, recording)
    return seen


def run(workdir, *flags) -> dict:
    argv = ["--model", "chat", "--tasks", "arithmetic_exact_match", "--include_path", "tasks", "--limit", "2"]
    return cli.evaluate([*argv, "--model_args", "mc_num=1,gen_length=4,steps=4", *flags])


def turn(role: str, content: str) -> str:
    """One ChatML turn, typed from the format: <|im_start|>ROLE\\nCONTENT<|im_end|>\\n."""
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def test_generation_prompts_are_chatml_conversations_with_the_fewshot_example_as_turns(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    seen = recorded_requests(monkeypatch, "generate_until")
    run(workdir, "--apply_chat_template", "--system_instruction", SYSTEM, "--num_fewshot", "1")
    docs = problems(workdir)
    expected = [
        turn("system", SYSTEM)
        + turn("user", f"{docs[1 - i]['prompt']}<DFF>")
        + turn("assistant", docs[1 - i]["answer"])
        + turn("user", f"{docs[i]['prompt']}<DFF>")
        + "<|im_start|>assistant\n"
        for i in range(2)
    ]
    assert sorted(context for context, _ in seen) == sorted(expected)


def test_fewshot_as_multiturn_false_puts_the_example_in_the_user_turn(workdir, monkeypatch):
    """lm-eval's single-turn layout: the example, the target delimiter ' ', its answer, the few-shot delimiter."""
    monkeypatch.chdir(workdir)
    seen = recorded_requests(monkeypatch, "generate_until")
    run(workdir, "--apply_chat_template", "--num_fewshot", "1", "--fewshot_as_multiturn", "false")
    docs = problems(workdir)
    expected = [
        turn("user", f"{docs[1 - i]['prompt']}<DFF> {docs[1 - i]['answer']}\n\n{docs[i]['prompt']}<DFF>")
        + "<|im_start|>assistant\n"
        for i in range(2)
    ]
    assert sorted(context for context, _ in seen) == sorted(expected)


def test_without_the_flag_prompts_are_the_task_text(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    seen = recorded_requests(monkeypatch, "generate_until")
    run(workdir)
    assert sorted(context for context, _ in seen) == sorted(f"{p}<DFF>" for p in problems(workdir)["prompt"])


def test_loglikelihood_contexts_are_rendered_with_the_generation_prompt(workdir, monkeypatch):
    """docstring_choice: the signature as a user turn and the opening of the reply, each choice after it with no
    target delimiter (lm-eval drops it under a chat template); mutual information's unconditional requests stay
    plain (an empty context)."""
    shutil.copytree(ROOT / "data" / "stdlib_docstrings", workdir / "data" / "stdlib_docstrings", dirs_exist_ok=True)
    monkeypatch.chdir(workdir)
    seen = recorded_requests(monkeypatch, "loglikelihood")
    argv = ["--model", "chat", "--tasks", "docstring_choice", "--include_path", "tasks", "--limit", "1"]
    cli.evaluate([*argv, "--model_args", "mc_num=1", "--apply_chat_template"])
    spec = importlib.util.spec_from_file_location("docstring_utils", ROOT / "tasks" / "docstring_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    split = datasets.load_dataset("json", data_files=str(workdir / "data/stdlib_docstrings/validation.jsonl.zst"))
    doc = module.four_way_choices(split["train"])[0]
    context = turn("user", doc["signature"]) + "<|im_start|>assistant\n"
    assert sorted(seen) == sorted([(context, choice) for choice in doc["choices"]] + [("", c) for c in doc["choices"]])


def test_generation_stops_at_the_end_of_turn_token(workdir, monkeypatch):
    """The sampler's ids `9<|im_end|>1`: the reply is `9`, and the sampler itself is told to stop at <|im_end|>."""
    lm = harness.DiffusionLM(str(workdir / "chat"), mc_num=1)
    end_of_turn = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = lm._encode("9") + [end_of_turn] + lm._encode("1")
    configs = []

    def sampler(model, prompts, config, **options):
        configs.append(config)
        return GenerationResult(torch.tensor([ids]), torch.ones(1, len(ids)), generation_start=0, nfe=1)

    monkeypatch.setattr(harness, "run_sampler", sampler)
    assert lm.generate_until([type("R", (), {"args": ("1+8=", {"until": [], "max_gen_toks": 3})})]) == ["9"]
    assert end_of_turn in configs[0].eos_token_id
    assert harness.DiffusionLM(str(workdir / "plain"), mc_num=1).end_of_turn_ids() == ()


@pytest.mark.parametrize("checkpoint", ["plain", "causal"])
def test_a_checkpoint_without_a_template_is_one_clear_error(workdir, monkeypatch, capsys, checkpoint):
    monkeypatch.chdir(workdir)
    argv = ["--model", checkpoint, "--tasks", "arithmetic_exact_match", "--include_path", "tasks", "--limit", "1"]
    with pytest.raises(SystemExit):
        cli.main([*argv, "--apply_chat_template"])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--apply_chat_template: {checkpoint} has no chat template; fine-tune it on conversations" in message


def test_fewshot_as_multiturn_needs_the_chat_template(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    with pytest.raises(SystemExit):
        cli.main(["--model", "chat", "--tasks", "arithmetic_exact_match", "--fewshot_as_multiturn"])
    assert "--fewshot_as_multiturn makes the examples turns of a chat: add --apply_chat_template" in (
        capsys.readouterr().err
    )


def test_a_prefilled_reply_is_continued_not_closed(workdir):
    """lm-eval asks for add_generation_prompt=False when a task's gen_prefix opens the assistant's reply: the text
    ends with that prefix, without the end of turn, so the model goes on from it."""
    lm = harness.DiffusionLM(str(workdir / "chat"), mc_num=1)
    messages = [{"role": "user", "content": "1+8=?"}, {"role": "assistant", "content": "The answer is"}]
    assert lm.apply_chat_template(messages, add_generation_prompt=False) == (
        turn("user", "1+8=?") + "<|im_start|>assistant\nThe answer is"
    )
    assert lm.apply_chat_template(messages[:1]) == turn("user", "1+8=?") + "<|im_start|>assistant\n"
