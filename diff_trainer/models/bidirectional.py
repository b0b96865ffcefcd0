"""Full (bidirectional) attention: switching a causal LM to it and checking that it took, recognising encoders and
peft wrappers, and the config fields LLaDA's and Dream's config.json share, mapped onto a native transformers config
with full attention (`is_causal = False`)."""

import torch

from ..diffusion_config import MASKED_LM_CLASS_NAMES


def bidirectional_config(config_class, raw: dict, **architecture):
    """`config_class` built from the layout-specific `architecture` fields plus the fields both layouts store alike
    (rotary base, attention dropout, special token ids), with causal masking switched off."""
    config = config_class(
        **architecture,
        rope_parameters={"rope_type": "default", "rope_theta": float(raw.get("rope_theta", 10000.0))},
        attention_dropout=raw.get("attention_dropout", 0.0),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
    )
    config.is_causal = False
    return config


def is_peft_model(model) -> bool:
    """True for a peft wrapper (LoRA adapters that can be disabled)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def unwrap_peft(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if is_peft_model(model) else model


def is_encoder_model(model) -> bool:
    """True for a masked-LM encoder (BERT, ModernBERT, ...), which attends both ways by construction."""
    base = unwrap_peft(model)
    return type(base).__name__ in MASKED_LM_CLASS_NAMES and not getattr(base.config, "is_decoder", False)


@torch.no_grad()
def attends_to_future(model) -> bool:
    """Whether position 0's logits depend on the last token (probed with two 3-token inputs in eval mode)."""
    base = unwrap_peft(model)
    pad_id = base.config.pad_token_id
    ids = [i for i in range(5) if i != pad_id][:4]
    first, second, last_a, last_b = ids
    input_ids = torch.tensor([[first, second, last_a], [first, second, last_b]], device=base.device)
    was_training = base.training
    base.eval()
    try:
        logits = base(input_ids=input_ids).logits
    finally:
        base.train(was_training)
    return not torch.equal(logits[0, 0], logits[1, 0])


def make_bidirectional(model):
    """Switch a causal LM to full (bidirectional) attention via `config.is_causal = False`, and check it worked.

    Encoders are accepted as they are. Raises ValueError for a model whose attention ignores the flag.
    """
    if is_encoder_model(model):
        return model
    config = unwrap_peft(model).config
    config.is_causal = False
    if not attends_to_future(model):
        config.is_causal = True
        raise ValueError(
            f"Model type {config.model_type!r} ignores config.is_causal=False: its attention stays causal, so it "
            "cannot be trained as a masked-diffusion model. Use a model family that honours the flag "
            "(e.g. llama, qwen2, gpt2) or an encoder with --masked_lm."
        )
    return model
