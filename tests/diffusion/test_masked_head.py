"""MaskedHead: the model's own head at masked positions only, equal to the full-logits loss (the independent
implementation: masked_token_losses on model(...).logits) in value and gradient, for several model families."""

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_llama
from diff_trainer.diffusion import masked_head as masked_head_module
from diff_trainer.diffusion.losses import masked_token_losses
from diff_trainer.diffusion.masked_head import MaskedHead, gather_plan

VOCAB, BATCH, LENGTH = 50, 3, 12


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    config.is_causal = False
    return GPT2LMHeadModel(config)  # lm_head tied to the input embedding


def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(2)
    return BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )  # transform + decoder


def tiny_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(3)
    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        final_logit_softcapping=3.0,
    )
    config.is_causal = False
    return Gemma2ForCausalLM(config)  # soft-caps the logits after its lm_head


def tiny_lora_llama():
    from peft import LoraConfig, get_peft_model

    model = make_tiny_llama(VOCAB, seed=4)
    return get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    )


def tiny_cohere():
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(5)
    config = CohereConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        logit_scale=0.5,
    )
    config.is_causal = False
    return CohereForCausalLM(config)  # multiplies the logits by logit_scale after its lm_head


MODELS = {
    "llama": lambda: make_tiny_llama(VOCAB, seed=0),
    "gpt2": tiny_gpt2,
    "bert": tiny_bert,
    "gemma2": tiny_gemma2,
    "cohere": tiny_cohere,
    "llama_lora": tiny_lora_llama,
}
CHUNK_ROWS = 6  # forced chunk size: the batch below scores 19 or 20 positions, so 4 chunks, the last one partial


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB - 1, (BATCH, LENGTH), generator=generator)
    masked = torch.rand(BATCH, LENGTH, generator=generator) < torch.tensor([[0.2], [0.5], [0.9]])
    masked[0, 0] = True  # position 0 masked: never scored with shift
    noisy = clean.masked_fill(masked, VOCAB - 1)
    return clean, noisy, masked


def loss_and_gradients(model, row_ce_of, phases=None):
    model.zero_grad()
    if phases is not None:
        phases.append("forward")
    row_ce = row_ce_of()
    if phases is not None:
        phases.append("backward")
    (row_ce * torch.tensor([1.0, 2.0, 0.5])).sum().backward()  # distinct row weights, as the loss has
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return row_ce.detach(), grads


def without_dropout(model):
    for module in model.modules():  # both passes must see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@pytest.mark.parametrize(
    "name, shift",
    [
        ("llama", False),
        ("llama", True),
        ("gpt2", True),
        ("bert", False),
        ("gemma2", False),
        ("cohere", False),
        ("llama_lora", True),
    ],
)
def test_masked_head_equals_the_full_logits_loss_and_gradient(name, shift, monkeypatch):
    monkeypatch.setattr(masked_head_module, "CHUNK_ELEMENTS", CHUNK_ROWS * VOCAB)
    model = without_dropout(MODELS[name]().train())
    clean, noisy, masked = batch()
    full, full_grads = loss_and_gradients(
        model, lambda: masked_token_losses(model(input_ids=noisy).logits, clean, masked, shift=shift).sum(1)
    )
    head = MaskedHead(model)
    phases = []  # the rows of each call of the projection, under the phase it ran in
    head.projection.register_forward_hook(lambda _m, _i, out: phases.append(out.shape[:-1].numel()))
    ours, our_grads = loss_and_gradients(
        model, lambda: head.row_masked_ce(lambda: model(input_ids=noisy).logits, clean, masked, shift), phases
    )
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    assert full.min() > 0
    assert our_grads.keys() == full_grads.keys()
    for key in full_grads:  # the head's weight and, through the hidden states, every other parameter
        torch.testing.assert_close(our_grads[key], full_grads[key], rtol=1e-5, atol=1e-5)
    # forward: one position inside the model, then the K scored positions in chunks of 6; backward: every chunk but
    # the last recomputed, last to first. No call ever projects more than 6 positions.
    scored = int(masked[:, 1:].sum() if shift else masked.sum())
    chunks = [CHUNK_ROWS] * (scored // CHUNK_ROWS) + ([scored % CHUNK_ROWS] if scored % CHUNK_ROWS else [])
    assert len(chunks) >= 3 and chunks[-1] < CHUNK_ROWS
    assert phases == ["forward", 1, *chunks, "backward", *chunks[:-1]]
    head.close()


def test_gather_plan_by_hand():
    targets = torch.tensor([[5, 6, 7], [8, 9, 4]])
    masked = torch.tensor([[True, False, True], [False, True, False]])
    index, token_targets, row_of = gather_plan(targets, masked, shift=False)
    assert index.tolist() == [0, 2, 4] and token_targets.tolist() == [5, 7, 9] and row_of.tolist() == [0, 0, 1]
    index, token_targets, row_of = gather_plan(targets, masked, shift=True)
    # shift: (0, 0) has no predecessor; (0, 2) is predicted at (0, 1) = flat 1, (1, 1) at (1, 0) = flat 3
    assert index.tolist() == [1, 3] and token_targets.tolist() == [7, 9] and row_of.tolist() == [0, 1]


def test_nothing_masked_scores_zero_and_still_backpropagates():
    model = make_tiny_llama(VOCAB)
    clean, noisy, _ = batch()
    head = MaskedHead(model)
    row_ce = head.row_masked_ce(lambda: model(input_ids=noisy).logits, clean, torch.zeros_like(clean, dtype=bool))
    assert row_ce.tolist() == [0.0, 0.0, 0.0]
    row_ce.sum().backward()  # a batch without masks still has a graph (DDP expects every parameter's gradient)
    assert model.lm_head.weight.grad.abs().max() == 0


def test_chunked_token_ce_matches_one_call(monkeypatch):
    """Loss, gradient of the hidden states and of the head's weight: chunks of 4 rows (4 + 4 + 4 + 1) as one call."""
    monkeypatch.setattr(masked_head_module, "CHUNK_ELEMENTS", 4 * VOCAB)
    head = MaskedHead(tiny_gemma2())  # soft-capped logits
    hidden = torch.randn(13, 32, requires_grad=True)
    targets = torch.randint(0, VOCAB, (13,), generator=torch.Generator().manual_seed(0))
    weights = torch.arange(13.0)
    gradients = []
    for token_ce_of in (
        lambda: head.chunked_token_ce(hidden, targets, VOCAB),
        lambda: F.cross_entropy(3.0 * torch.tanh(hidden @ head.projection.weight.T / 3.0), targets, reduction="none"),
    ):
        hidden.grad, head.projection.weight.grad = None, None
        token_ce = token_ce_of()
        (token_ce * weights).sum().backward()
        gradients.append((token_ce.detach(), hidden.grad.clone(), head.projection.weight.grad.clone()))
    for chunked, one_call in zip(*gradients):
        torch.testing.assert_close(chunked, one_call, rtol=1e-5, atol=1e-6)


def test_fused_path_projects_no_masked_position_and_sums_each_row(monkeypatch):
    """The fused (Liger) path's plumbing with a reference kernel: Σ CE of softcap(h·Wᵀ) over each row's tokens."""

    def reference_kernel(hidden, weight, targets, bias=None, reduction="sum", softcap=None):
        logits = F.linear(hidden, weight, bias)
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        return F.cross_entropy(logits.float(), targets, reduction=reduction, ignore_index=-100)

    monkeypatch.setattr(masked_head_module, "_liger_function", lambda: reference_kernel)
    monkeypatch.setattr(MaskedHead, "_use_fused", lambda self, hidden: True)
    model = tiny_gemma2()
    clean, noisy, masked = batch(1)
    full = masked_token_losses(model(input_ids=noisy).logits, clean, masked).sum(1)
    head = MaskedHead(model)
    logits_shapes = []
    head.projection.register_forward_hook(lambda _m, _i, out: logits_shapes.append(tuple(out.shape)))
    fused = head.row_masked_ce(lambda: model(input_ids=noisy).logits, clean, masked)
    torch.testing.assert_close(fused, full, rtol=1e-5, atol=1e-5)
    assert logits_shapes == [(1, 1, VOCAB)]  # the projection itself ran on one position only


def test_a_projection_that_bypassed_the_hook_is_an_error():
    model = make_tiny_llama(VOCAB)
    clean, noisy, masked = batch()
    head = MaskedHead(model)
    head.close()  # as if the model had been compiled before the hook existed: full logits come back
    with pytest.raises(RuntimeError, match="--masked_head false"):
        head.row_masked_ce(lambda: model(input_ids=noisy).logits, clean, masked)


def test_logits_changed_after_the_projection_in_an_unknown_way_are_refused():
    model = make_tiny_llama(VOCAB)
    clean, noisy, masked = batch()
    head = MaskedHead(model)
    with pytest.raises(RuntimeError, match="after its output projection.*--masked_head false"):
        head.row_masked_ce(lambda: model(input_ids=noisy).logits * 2.0, clean, masked)
    head.row_masked_ce(lambda: model(input_ids=noisy).logits, clean, masked)
    assert head.checked
