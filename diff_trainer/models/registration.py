"""One place that makes a model class loadable with the transformers Auto* factories."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM


def register_auto_model(config_class, model_class) -> None:
    """Register `config_class` under its `model_type` with AutoConfig, and `model_class` with AutoModel and
    AutoModelForCausalLM (the class every diffusion checkpoint here is loaded with, causal or not)."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
