"""The model to train: loaded or built (`models.loading`), prepared for its objective (`objectives`), wrapped with
LoRA adapters under --use_lora."""

from peft import LoraConfig, get_peft_model

from ..diffusion_config import DEFAULT_OBJECTIVE, auto_class_name, read_diffusion_config
from ..models.bidirectional import is_encoder_model, make_bidirectional
from ..models.loading import load_model
from ..objectives import objective_for

MODES = ("causal", "diffusion")


def prepare_model(model_args, tokenizer, mode: str, *, new_token_ids=(), diffusion_settings=None):
    """The model to train: loaded or built with its auto class and fitted to `tokenizer`; for mode "diffusion"
    prepared by its objective (bidirectional and self-describing); wrapped with LoRA under --use_lora.

    diffusion_settings (the objective's `settings` plus dff_token, row_packing) are written into the config's
    `diffusion_config`; without them the checkpoint must already be a diffusion model whose objective defines
    preference scores (DPO). `new_token_ids` are the tokens added in this run, trained (and saved) with the adapter
    under LoRA.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "causal" and model_args.masked_lm:
        raise ValueError("--masked_lm loads an encoder as the denoiser: it only applies with --train_diff_model.")
    model = load_model(model_args, tokenizer)
    if mode == "diffusion" and diffusion_settings is not None:
        objective = objective_for(diffusion_settings.get("objective", DEFAULT_OBJECTIVE))
        model = objective.prepare_model(
            model,
            tokenizer,
            diffusion_settings,
            masked_lm=model_args.masked_lm,
            auto_class=auto_class_name(model.config, model_args.masked_lm),
        )
    elif mode == "diffusion":
        recorded = read_diffusion_config(model.config)
        if recorded is not None and not objective_for(recorded).scores_preferences:
            raise ValueError(
                f"{model_args.model_name_or_path} is a {objective_for(recorded).title} checkpoint; "
                "VRPO / DPO is defined here for masked- and block-diffusion ELBOs only."
            )
        make_bidirectional(model)
        if recorded is None:
            raise ValueError(
                f"{model_args.model_name_or_path} is not a masked-diffusion checkpoint (no "
                "diffusion_config in its config); train one with run_clm_diff.py --train_diff_model."
            )
    if model_args.use_lora:
        model = apply_lora(model, model_args, new_token_ids)
    return model


def _module_name(model, module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _new_token_options(model, new_token_ids) -> dict:
    """LoraConfig options that train the rows of newly added tokens and save them with the adapter.

    peft's `trainable_token_indices` trains only those rows (of the input embedding, and of an untied output
    layer); it drops an output layer's bias, so a biased output layer (BERT-style) is trained whole instead.
    """
    if not new_token_ids:
        return {}
    token_ids = sorted(new_token_ids)
    input_layer, output_layer = model.get_input_embeddings(), model.get_output_embeddings()
    layer_names = [_module_name(model, input_layer)]
    if output_layer is not None:
        if getattr(output_layer, "bias", None) is not None:
            return {"modules_to_save": layer_names + [_module_name(model, output_layer)]}
        if output_layer.weight is not input_layer.weight:  # a tied output layer follows the embedding's rows
            layer_names.append(_module_name(model, output_layer))
    return {"trainable_token_indices": {name: token_ids for name in layer_names}}


def apply_lora(model, model_args, new_token_ids):
    """Wrap `model` with LoRA adapters; the rows of newly added tokens are trained and saved with the adapter."""
    targets = list(model_args.lora_target_modules)
    lora_config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        # peft's CAUSAL_LM wrapper needs generate(): not for encoders, DDiT or TimeConditionedLM
        task_type="CAUSAL_LM"
        if hasattr(model, "prepare_inputs_for_generation") and not is_encoder_model(model)
        else None,
        **_new_token_options(model, new_token_ids),
    )
    return get_peft_model(model, lora_config)
