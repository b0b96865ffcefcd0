"""diffusion_lm: ELBO log-likelihoods against elbo_nll and a hand computation, sampling against sampling.generate;
SEDD checkpoints against the trainer's DWDSE bound and sedd_generate."""

from types import SimpleNamespace

import pytest
import torch

from conftest import make_byte_tokenizer, make_tiny_llama, make_tiny_sedd, masked_diffusion_config

pytest.importorskip("lm_eval", reason="needs the [eval] extra: pip install -e '.[eval]'")

from diff_trainer.diffusion.elbo import elbo_nll  # noqa: E402
from diff_trainer.eval.harness import DiffusionLM  # noqa: E402
from diff_trainer.objectives.sedd import SeddObjective  # noqa: E402
from diff_trainer.sampling.masked import generate  # noqa: E402
from diff_trainer.sampling.sedd import sedd_generate  # noqa: E402


def request(*args):
    return SimpleNamespace(args=args)


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    model = make_tiny_llama(len(tokenizer))
    model.config.diffusion_config = {
        "objective": "masked_diffusion",
        "mask_token_id": tokenizer.mask_token_id,
        "shift_logits": False,
        "noise_schedule": "linear",
        "time_eps": 1e-3,
        "dff_token": "<DFF>",
    }
    return model


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def first_line(sampled, tokenizer) -> str:
    """The first line of the first sampled row's text before its EOS."""
    ids = sampled.generated[0].tolist()
    text = tokenizer.decode(
        ids[: ids.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in ids else ids, skip_special_tokens=True
    )
    return text.split("\n")[0]


def test_loglikelihood_is_minus_elbo_nll_of_the_continuation_for_the_same_seed(model, tokenizer):
    lm = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=6, batch_size=4, seed=11)
    context, continuation = encode(tokenizer, "def f(x)<DFF>"), encode(tokenizer, "Return x.")
    ids = torch.tensor([context + continuation])
    maskable = torch.tensor([[False] * len(context) + [True] * len(continuation)])
    expected = -elbo_nll(
        lambda noisy: model(input_ids=noisy).logits,
        ids,
        maskable,
        tokenizer.mask_token_id,
        6,
        generator=torch.Generator().manual_seed(11),
    )
    ((score, _),) = lm.loglikelihood([request("def f(x)<DFF>", "Return x.")])
    assert score == pytest.approx(float(expected), rel=1e-5)
    other_seed = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=6, batch_size=4, seed=12)
    assert other_seed.loglikelihood([request("def f(x)<DFF>", "Return x.")])[0][0] != pytest.approx(score, rel=1e-6)


@torch.no_grad()
def test_one_token_continuation_scores_its_exact_log_probability(model, tokenizer):
    """With one maskable token every Monte-Carlo sample masks exactly it: the ELBO is log p(token | context)."""
    lm = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=5, batch_size=2)
    context, (token,) = encode(tokenizer, "12+7=<DFF>"), encode(tokenizer, "9")
    logits = model(input_ids=torch.tensor([context + [tokenizer.mask_token_id]])).logits[0, -1]
    expected = float(torch.log_softmax(logits, -1)[token])
    ((score, _),) = lm.loglikelihood([request("12+7=<DFF>", "9")])
    assert score == pytest.approx(expected, abs=1e-5)
    (rolled,) = lm.loglikelihood_rolling([request("9")])  # no BOS in this tokenizer: p("9") from a lone mask
    alone = model(input_ids=torch.tensor([[tokenizer.mask_token_id]])).logits[0, -1]
    assert rolled == pytest.approx(float(torch.log_softmax(alone, -1)[token]), abs=1e-5)


def test_scores_do_not_depend_on_batch_size_or_order(model, tokenizer):
    pairs = [request("abs(x)<DFF>", "Absolute value."), request("len(s)<DFF>", "Length of s.")]
    small = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=8, batch_size=1).loglikelihood(pairs)
    large = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=8, batch_size=64).loglikelihood(pairs[::-1])
    assert [s for s, _ in small] == pytest.approx([s for s, _ in large[::-1]], rel=1e-5)


def test_rolling_is_the_elbo_of_the_whole_text(model, tokenizer):
    lm = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=4, batch_size=8, seed=3)
    ids = torch.tensor([encode(tokenizer, "len(s)<DFF>Length.")])
    expected = -elbo_nll(
        lambda noisy: model(input_ids=noisy).logits,
        ids,
        torch.ones_like(ids, dtype=torch.bool),
        tokenizer.mask_token_id,
        4,
        generator=torch.Generator().manual_seed(3),
    )
    assert lm.loglikelihood_rolling([request("len(s)<DFF>Length.")]) == pytest.approx([float(expected)], rel=1e-5)


@torch.no_grad()
def test_is_greedy_is_the_one_step_argmax(model, tokenizer):
    lm = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=1)
    context = encode(tokenizer, "abs(x)<DFF>")
    logits = model(input_ids=torch.tensor([context + [tokenizer.mask_token_id] * 3])).logits[0, -3:]
    greedy = logits.argmax(-1).tolist()
    other = greedy[:2] + [(greedy[2] + 1) % 200 + 3]
    assert lm.one_step_greedy(context, greedy) is True
    assert lm.one_step_greedy(context, other) is False


def test_generate_until_runs_the_sampler_with_model_args_and_cuts_at_stop_strings(model, tokenizer):
    lm = DiffusionLM(
        model=model, tokenizer=tokenizer, batch_size=2, seed=5, steps="4", block_length="4", gen_length="8"
    )
    config = lm.sampler_config(max_gen_toks=32)
    assert (config.gen_length, config.steps, config.block_length) == (8, 4, 4)
    prompts = ["1+1=<DFF>", "22+3=<DFF>", "7-9=<DFF>"]
    outputs = lm.generate_until([request(p, {"until": ["\n"], "max_gen_toks": 32}) for p in prompts])
    for prompt, output in zip(prompts, outputs):
        assert output == first_line(generate(model, [encode(tokenizer, prompt)], config, seed=5), tokenizer)
    default = DiffusionLM(model=model, tokenizer=tokenizer).sampler_config(max_gen_toks=6)
    assert (default.gen_length, default.steps, default.threshold) == (6, 6, None)


def test_bad_model_args_and_causal_checkpoints_are_refused(model, tokenizer):
    with pytest.raises(ValueError, match="unknown model_args.*mc_numm"):
        DiffusionLM(model=model, tokenizer=tokenizer, mc_numm=4)
    with pytest.raises(ValueError, match="multiple of block_length"):
        DiffusionLM(model=model, tokenizer=tokenizer, gen_length=10, block_length=4)
    causal = make_tiny_llama(len(tokenizer), bidirectional=False)
    with pytest.raises(ValueError, match="causal checkpoint.*`hf` model"):
        DiffusionLM(model=causal, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="predictor is a setting of the SEDD sampler"):
        DiffusionLM(model=model, tokenizer=tokenizer, predictor="euler")
    with pytest.raises(ValueError, match="threshold, temperature are settings of the masked-diffusion sampler"):
        DiffusionLM(model=make_tiny_sedd(tokenizer, "absorb"), tokenizer=tokenizer, threshold=0.9, temperature=1.0)


@torch.no_grad()
def test_shift_model_scores_and_greedy_read_the_logits_one_position_earlier(tokenizer):
    """An AR-adapted checkpoint (shift_logits): the logits at i predict token i + 1."""
    model = make_tiny_llama(len(tokenizer), seed=1)
    model.config.diffusion_config = {
        "objective": "masked_diffusion",
        "mask_token_id": tokenizer.mask_token_id,
        "shift_logits": True,
        "noise_schedule": "linear",
        "time_eps": 1e-3,
        "dff_token": "<DFF>",
    }
    lm = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=3)
    # This tokenizer has no BOS: a shift model is given the EOS before a text, as in EOS-padded and packed rows.
    context, (token,) = [tokenizer.eos_token_id] + encode(tokenizer, "12+7=<DFF>"), encode(tokenizer, "9")
    logits = model(input_ids=torch.tensor([context + [tokenizer.mask_token_id]])).logits[0]
    ((score, greedy),) = lm.loglikelihood([request("12+7=<DFF>", "9")])
    assert score == pytest.approx(float(torch.log_softmax(logits[-2], -1)[token]), abs=1e-5)
    assert greedy is (int(logits[-2].argmax()) == token)
    assert lm.one_step_greedy(context, [int(logits[-2].argmax())]) is True
    # An empty context (acc_mutual_info) and a whole text are scored after that EOS too.
    eos_logits = model(input_ids=torch.tensor([[tokenizer.eos_token_id, tokenizer.mask_token_id]])).logits[0]
    ((empty_score, _),) = lm.loglikelihood([request("", "9")])
    assert empty_score == pytest.approx(float(torch.log_softmax(eos_logits[0], -1)[token]), abs=1e-5)
    (rolling,) = lm.loglikelihood_rolling([request("9")])
    assert rolling == pytest.approx(empty_score, abs=1e-6)
    (output,) = lm.generate_until([request("12+7=<DFF>", {"until": ["\n"], "max_gen_toks": 4})])
    assert output == first_line(generate(model, [context], lm.sampler_config(max_gen_toks=4), seed=lm.seed), tokenizer)


def test_registered_with_the_harness_as_diffusion_lm():
    from lm_eval.api.registry import get_model

    assert get_model("diffusion_lm") is DiffusionLM


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@torch.no_grad()
def test_sedd_checkpoints_are_scored_with_the_trainers_dwdse_bound_and_sampled_with_sedd_generate(tokenizer, graph):
    model = make_tiny_sedd(tokenizer, graph)
    lm = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=6, batch_size=4, seed=11, steps=3)
    context, continuation = encode(tokenizer, "def f(x)<DFF>"), encode(tokenizer, "Return x.")
    ids = torch.tensor([context + continuation])
    maskable = torch.tensor([[False] * len(context) + [True] * len(continuation)])
    objective = SeddObjective.from_diffusion_config(model.config.diffusion_config, len(tokenizer))
    expected = objective.elbo_nll(model, ids, torch.ones_like(ids), maskable, 6, torch.Generator().manual_seed(11))
    ((score, greedy),) = lm.loglikelihood([request("def f(x)<DFF>", "Return x.")])
    assert score == pytest.approx(-float(expected), rel=1e-5)
    one_chunk = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=6, batch_size=64, seed=11)
    assert one_chunk.loglikelihood([request("def f(x)<DFF>", "Return x.")])[0][0] == pytest.approx(score, rel=1e-6)
    assert lm.loglikelihood_rolling([request("Return x.")])[0] == pytest.approx(
        -float(
            objective.elbo_nll(
                model,
                ids[:, len(context) :],
                torch.ones_like(ids[:, len(context) :]),
                maskable[:, len(context) :],
                6,
                torch.Generator().manual_seed(11),
            )
        ),
        rel=1e-5,
    )
    assert greedy is False  # a random model does not rank "Return x." first
    (output,) = lm.generate_until([request("1+1=<DFF>", {"until": ["\n"], "max_gen_toks": 4})])
    config = lm.sampler_config(max_gen_toks=4)
    assert (config.graph, config.gen_length, config.steps, config.predictor) == (graph, 4, 3, "euler")
    assert output == first_line(sedd_generate(model, [encode(tokenizer, "1+1=<DFF>")], config, seed=11), tokenizer)


@torch.no_grad()
def test_sedd_absorbing_greedy_is_the_argmax_of_the_masked_continuation_without_the_mask_state(tokenizer):
    model = make_tiny_sedd(tokenizer, "absorb")
    lm = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=1)
    context = encode(tokenizer, "abs(x)<DFF>")
    logits = model(input_ids=torch.tensor([context + [tokenizer.mask_token_id] * 3])).logits[0, -3:]
    logits[:, tokenizer.mask_token_id] = float("-inf")  # RADD: log-scores are the logits' log-softmax + a constant
    best = logits.argmax(-1).tolist()
    assert lm.one_step_greedy(context, best) is True
    assert lm.one_step_greedy(context, best[:2] + [(best[2] + 1) % 200 + 3]) is False


def test_sedd_uniform_greedy_is_whether_the_continuation_is_a_fixed_point(tokenizer, monkeypatch):
    """Log-scores of tokens i.i.d. with weights w: log w_y − log w_x. The most likely token is a fixed point."""
    lm = DiffusionLM(model=make_tiny_sedd(tokenizer, "uniform"), tokenizer=tokenizer, mc_num=1)
    log_weights = torch.zeros(len(tokenizer))
    log_weights[7], log_weights[9] = 2.0, 1.0
    monkeypatch.setattr(
        type(lm.objective),
        "log_score",
        lambda self, model, ids, sigma, attention: log_weights - log_weights[ids][..., None],
    )
    context = encode(tokenizer, "abs(x)<DFF>")
    assert lm.one_step_greedy(context, [7, 7]) is True
    assert lm.one_step_greedy(context, [7, 9]) is False
    assert lm.one_step_greedy(context, [5]) is False


@torch.no_grad()
def test_block_checkpoints_are_scored_with_the_block_nelbo_and_sampled_block_by_block(tokenizer):
    """L' = 1 with shift: is_greedy is the causal twin's greedy continuation; scores are the objective's bound;
    generate_until runs the block sampler."""
    from diff_trainer.objectives.block import BlockDiffusion
    from diff_trainer.sampling.block import generate as block_generate

    settings = {
        "block_size": 1,
        "shift_logits": True,
        "noise_schedule": "linear",
        "time_eps": 1e-3,
        "dff_token": "<DFF>",
    }
    model = BlockDiffusion.prepare_model(
        make_tiny_llama(len(tokenizer), seed=5), tokenizer, settings, masked_lm=False, auto_class="AutoModelForCausalLM"
    )
    causal = make_tiny_llama(len(tokenizer), bidirectional=False, seed=5)
    lm = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=4, batch_size=3, seed=11, gen_length="6", threshold="0.9")
    context = lm._prefix() + encode(tokenizer, "def f(x)<DFF>")
    greedy = list(context)
    for _ in range(3):
        greedy.append(int(causal(input_ids=torch.tensor([greedy])).logits[0, -1].argmax()))
    continuation = greedy[len(context) :]
    assert lm.one_step_greedy(context, continuation)
    assert not lm.one_step_greedy(context, continuation[:-1] + [(continuation[-1] + 1) % 200])
    ids = torch.tensor([greedy])
    maskable = torch.arange(len(greedy))[None] >= len(context)
    expected = lm.objective.elbo_nll(model, ids, None, maskable, 4, torch.Generator().manual_seed(11))
    assert lm.continuation_nll(context, continuation) == pytest.approx(float(expected), rel=1e-5)
    (output,) = lm.generate_until([request("1+1=<DFF>", {"until": ["\n"], "max_gen_toks": 32})])
    config = lm.sampler_config(max_gen_toks=32)
    sampled = block_generate(model, [lm._prefix() + encode(tokenizer, "1+1=<DFF>")], config, block_size=1, seed=11)
    assert output == first_line(sampled, tokenizer)


@torch.no_grad()
def test_a_chat_context_that_starts_with_bos_gets_no_second_one():
    """LLaDA's template writes the BOS itself: the model sees it once; a plain context still gets one put before it."""
    from diff_trainer.data.chat import set_chat_template

    tokenizer = make_byte_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<|startoftext|>"})
    set_chat_template(tokenizer, "llada")
    model = make_tiny_llama(len(tokenizer))
    model.config.diffusion_config = masked_diffusion_config(tokenizer)
    lm = DiffusionLM(model=model, tokenizer=tokenizer, mc_num=3)
    context = lm.apply_chat_template([{"role": "user", "content": "12+7="}])
    assert context == "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n12+7=<|eot_id|>" + (
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    (token,) = encode(tokenizer, "9")

    def exact(ids):  # one masked token: the ELBO is its log-probability
        logits = model(input_ids=torch.tensor([ids + [tokenizer.mask_token_id]])).logits[0, -1]
        return float(torch.log_softmax(logits, -1)[token])

    bos = tokenizer.bos_token_id
    assert encode(tokenizer, context).count(bos) == 1
    ((chat, _), (plain, _)) = lm.loglikelihood([request(context, "9"), request("12+7=", "9")])
    assert chat == pytest.approx(exact(encode(tokenizer, context)), abs=1e-5)
    assert plain == pytest.approx(exact([bos] + encode(tokenizer, "12+7=")), abs=1e-5)
