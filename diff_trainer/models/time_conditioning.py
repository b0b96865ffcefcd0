"""Noise-level conditioning for any transformers LM, without forking its code.

`TimeConditionedLM` wraps a language model (`.lm`) and adds c(σ̄) = MLP(sinusoidal_256(σ̄)) to its input embeddings
(the last MLP layer starts at zero, so a wrapped pretrained model starts out unchanged). It is a registered
transformers model: after `import diff_trainer.models`, `AutoModelForCausalLM.from_pretrained(dir)` restores the
wrapper, the wrapped model and the embedding. Called as `model(input_ids, sigma=σ̄)`, it returns SEDD log-scores in
`.logits`.
"""

import torch
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from ..diffusion.sedd import scale_log_score_by_sigma, zero_input_entry
from .ddit import FREQUENCY_EMBEDDING_SIZE, NoiseLevelEmbedder
from .registration import OwnedWeightsMixin, register_auto_model


class TimeConditionedConfig(PretrainedConfig):
    """The wrapped model's config (`base_config`) and the noise embedding's settings."""

    model_type = "time_conditioned"
    sub_configs = {"base_config": AutoConfig}

    def __init__(self, base_config=None, frequency_dim=FREQUENCY_EMBEDDING_SIZE, scale_by_sigma=False, **kwargs):
        if isinstance(base_config, dict):
            base_config = CONFIG_MAPPING[base_config["model_type"]](**base_config)
        self.base_config = base_config
        self.frequency_dim = frequency_dim
        self.scale_by_sigma = scale_by_sigma
        kwargs.setdefault("is_causal", False)
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs):
        return self.base_config.get_text_config(*args, **kwargs)


class TimeConditionedLM(OwnedWeightsMixin, PreTrainedModel):
    """A language model whose input embeddings get the noise-level embedding c(σ̄) added at every position."""

    config_class = TimeConditionedConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: TimeConditionedConfig, lm=None):
        super().__init__(config)
        self.lm = lm if lm is not None else AutoModelForCausalLM.from_config(config.base_config)
        hidden_size = self.lm.get_input_embeddings().weight.shape[1]
        self.noise_embedding = NoiseLevelEmbedder(hidden_size, config.frequency_dim)
        self.noise_embedding.mlp[2].zero_init = True
        self.post_init()

    @classmethod
    def wrap(cls, lm, scale_by_sigma: bool = False) -> "TimeConditionedLM":
        """Wrap an existing model (its weights are kept; the model attends both ways)."""
        implementation = lm.config._attn_implementation
        lm.config.is_causal = False
        model = cls(TimeConditionedConfig(base_config=lm.config, scale_by_sigma=scale_by_sigma), lm=lm)
        model.set_attn_implementation(implementation)  # building the wrapper resets the wrapped config's choice
        return model

    def _init_weights(self, module):
        """PyTorch's default init for the embedding MLP, its output layer at zero."""
        if isinstance(module, torch.nn.Linear):
            if getattr(module, "zero_init", False):
                torch.nn.init.zeros_(module.weight)
                torch.nn.init.zeros_(module.bias)
            else:
                module.reset_parameters()

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.lm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    def resize_token_embeddings(self, *args, **kwargs):
        embeddings = self.lm.resize_token_embeddings(*args, **kwargs)
        self.config.base_config = self.lm.config
        return embeddings

    def forward(self, input_ids, sigma=None, attention_mask=None, position_ids=None, **kwargs) -> MaskedLMOutput:
        """`sigma`: the total noise σ̄ of each row, Tensor[B]."""
        if sigma is None:
            raise ValueError("a time-conditioned model needs the noise level: call model(input_ids, sigma=σ̄).")
        sigma = torch.as_tensor(sigma, device=input_ids.device).float().expand(input_ids.shape[0])
        embeddings = self.lm.get_input_embeddings()(input_ids)
        embeddings = embeddings + self.noise_embedding(sigma).to(embeddings.dtype)[:, None, :]
        output = self.lm(inputs_embeds=embeddings, attention_mask=attention_mask, position_ids=position_ids).logits
        if self.config.scale_by_sigma:
            output = scale_log_score_by_sigma(output, sigma)
        return MaskedLMOutput(logits=zero_input_entry(output, input_ids))


register_auto_model(TimeConditionedConfig, TimeConditionedLM)
