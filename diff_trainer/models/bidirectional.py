"""The config fields LLaDA's and Dream's config.json share, mapped onto a native transformers config with full
attention (`is_causal = False`)."""


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
