"""SEDD's DDiT denoiser (Lou, Meng & Ermon 2024) as a transformers model that `AutoModel.from_pretrained` loads.

A bidirectional transformer whose every block is modulated by the noise level σ̄ (adaLN: shift, scale and gate,
zero-initialised, after DiT), with rotary attention. It returns SEDD log-scores [B, L, vocab_size] in `.logits`.
The parameter names follow `louaaron/sedd-small`, so that checkpoint's state dict loads as it is.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import MaskedLMOutput

from ..data.char_tokenizer import register_char_tokenizer
from ..diffusion.sedd import scale_log_score_by_sigma, zero_input_entry
from .registration import OwnedWeightsMixin, register_auto_model

FREQUENCY_EMBEDDING_SIZE = 256
MAX_PERIOD = 10_000


class DDiTConfig(PretrainedConfig):
    """Sizes of a DDiT; `vocab_size` counts every state (for the absorbing graph, MASK included)."""

    model_type = "ddit"

    def __init__(
        self,
        vocab_size=50258,
        hidden_size=768,
        cond_dim=128,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=1024,
        dropout=0.1,
        scale_by_sigma=False,
        **kwargs,
    ):
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}."
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.cond_dim = cond_dim
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.dropout = dropout
        self.scale_by_sigma = scale_by_sigma
        kwargs.setdefault("is_causal", False)
        super().__init__(**kwargs)


def sinusoidal_embedding(values: torch.Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE) -> torch.Tensor:
    """[cos(v·f_k), sin(v·f_k)] with f_k = 10000^(−k/(dim/2)) (the DiT / SEDD timestep embedding)."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=values.device)
    frequencies = torch.exp(-math.log(MAX_PERIOD) * steps / half)
    angles = values.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class NoiseLevelEmbedder(nn.Module):
    """σ̄ -> MLP(sinusoidal_256(σ̄)): 256 -> out_dim -> SiLU -> out_dim (`mlp.0`, `mlp.2` as in SEDD)."""

    def __init__(self, out_dim: int, frequency_dim: int = FREQUENCY_EMBEDDING_SIZE):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        embedding = sinusoidal_embedding(sigma, self.frequency_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(embedding)


class LayerNormNoBias(nn.Module):
    """LayerNorm in float32 with a weight and no bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.layer_norm(x.float(), [x.shape[-1]]).to(x.dtype) * self.weight


class TokenEmbedding(nn.Module):
    """A plain [N, hidden] table stored as `embedding` (SEDD's name)."""

    def __init__(self, num_states: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(num_states, dim))

    @property
    def weight(self) -> nn.Parameter:
        """The table under the name other code expects of an input embedding."""
        return self.embedding

    def forward(self, ids):
        return self.embedding[ids]


class Rotary(nn.Module):
    """Rotary position embedding (RoFormer) on the halves of each head's dimensions, base 10000."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("inv_freq", self.frequencies(head_dim))

    @staticmethod
    def frequencies(head_dim: int) -> torch.Tensor:
        return 1.0 / (MAX_PERIOD ** (torch.arange(0, head_dim, 2).float() / head_dim))

    def forward(self, position_ids):
        """(cos, sin), each [B, L, 1, head_dim]."""
        angles = position_ids.float()[..., None] * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]
        return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """x·cos + rotate_half(x)·sin, rotate_half([a, b]) = [−b, a]."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def modulate(x, shift, scale):
    """adaLN: x(1 + scale) + shift."""
    return x * (1 + scale) + shift


class DDiTBlock(nn.Module):
    """x += gate·attention(modulate(LN(x))); x += gate·MLP(modulate(LN(x))), shift/scale/gate from the noise level."""

    def __init__(self, config: DDiTConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.norm1 = LayerNormNoBias(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNormNoBias(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(config.dropout)
        self.adaLN_modulation = nn.Linear(config.cond_dim, 6 * dim)
        self.adaLN_modulation.zero_init = True

    def forward(self, x, cos, sin, condition, key_mask):
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(condition)[
            :, None
        ].chunk(6, dim=-1)
        batch_size, length, dim = x.shape
        qkv = self.attn_qkv(modulate(self.norm1(x), shift_attn, scale_attn))
        q, k, v = qkv.reshape(batch_size, length, 3, self.num_heads, dim // self.num_heads).unbind(2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask
        )
        attended = attended.transpose(1, 2).reshape(batch_size, length, dim)
        x = x + gate_attn * self.dropout(self.attn_out(attended))
        return x + gate_mlp * self.dropout(self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class DDiTFinalLayer(nn.Module):
    """modulate(LN(x)) then a zero-initialised projection to the N states."""

    def __init__(self, config: DDiTConfig):
        super().__init__()
        self.norm_final = LayerNormNoBias(config.hidden_size)
        self.linear = nn.Linear(config.hidden_size, config.vocab_size)
        self.linear.zero_init = True
        self.adaLN_modulation = nn.Linear(config.cond_dim, 2 * config.hidden_size)
        self.adaLN_modulation.zero_init = True

    def forward(self, x, condition):
        shift, scale = self.adaLN_modulation(condition)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DDiTPreTrainedModel(OwnedWeightsMixin, PreTrainedModel):
    config_class = DDiTConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _supports_sdpa = True

    def _init_weights(self, module):
        """PyTorch's default init, adaLN and output projections at zero (DiT), SEDD's embedding init."""
        if isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):
                init.zeros_(module.weight)
                init.zeros_(module.bias)
                return
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, TokenEmbedding):
            init.kaiming_uniform_(module.embedding, a=math.sqrt(5))
        elif isinstance(module, LayerNormNoBias):
            init.ones_(module.weight)
        elif isinstance(module, Rotary):
            init.copy_(module.inv_freq, Rotary.frequencies(module.head_dim))


class DDiTModel(DDiTPreTrainedModel):
    """`model(input_ids, sigma)` -> `.logits`: log-scores s[b, i, y], 0 at y = input_ids[b, i]."""

    def __init__(self, config: DDiTConfig):
        super().__init__(config)
        self.vocab_embed = TokenEmbedding(config.vocab_size, config.hidden_size)
        self.sigma_map = NoiseLevelEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.hidden_size // config.num_attention_heads)
        self.blocks = nn.ModuleList(DDiTBlock(config) for _ in range(config.num_hidden_layers))
        self.output_layer = DDiTFinalLayer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.vocab_embed

    def set_input_embeddings(self, value: TokenEmbedding):
        self.vocab_embed = value

    def get_output_embeddings(self) -> nn.Linear:
        """The projection to the N states (one row per state, as an LM head)."""
        return self.output_layer.linear

    def set_output_embeddings(self, value: nn.Linear):
        self.output_layer.linear = value

    @torch.no_grad()
    def resize_token_embeddings(self, new_num_tokens: int) -> TokenEmbedding:
        """Append states (new tokens) after the existing ones; existing ids, rows and scores are kept.

        Each new state starts as the average state: the mean of the existing rows of the input table and of the
        output projection (weight and bias). States cannot be removed. With `scale_by_sigma` the output is shifted
        by log(N − 1), so every log-score moves by log((N_old − 1)/(N_new − 1)).
        """
        old_num_tokens = self.config.vocab_size
        if new_num_tokens < old_num_tokens:
            raise ValueError(f"a DDiT cannot drop states: it has {old_num_tokens}, asked for {new_num_tokens}.")
        added = new_num_tokens - old_num_tokens

        def grown(rows: torch.Tensor) -> nn.Parameter:
            mean = rows.mean(dim=0, keepdim=True).expand(added, *rows.shape[1:])
            return nn.Parameter(torch.cat([rows, mean]), requires_grad=rows.requires_grad)

        self.vocab_embed.embedding = grown(self.vocab_embed.embedding)
        self.output_layer.linear.weight = grown(self.output_layer.linear.weight)
        self.output_layer.linear.bias = grown(self.output_layer.linear.bias)
        self.output_layer.linear.out_features = new_num_tokens
        self.config.vocab_size = new_num_tokens
        return self.vocab_embed

    def forward(self, input_ids, sigma=None, attention_mask=None, position_ids=None, **kwargs) -> MaskedLMOutput:
        """`sigma`: the total noise σ̄ of each row, Tensor[B]; `attention_mask` hides padding keys."""
        if sigma is None:
            raise ValueError("a DDiT needs the noise level: call model(input_ids, sigma=σ̄) with one σ̄ per row.")
        sigma = torch.as_tensor(sigma, device=input_ids.device).float().expand(input_ids.shape[0])
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.vocab_embed(input_ids)
        condition = F.silu(self.sigma_map(sigma))
        cos, sin = self.rotary_emb(position_ids)
        for block in self.blocks:
            x = block(x, cos.to(x.dtype), sin.to(x.dtype), condition, key_mask)
        output = self.output_layer(x, condition)
        if self.config.scale_by_sigma:
            output = scale_log_score_by_sigma(output, sigma)
        return MaskedLMOutput(logits=zero_input_entry(output, input_ids))


register_auto_model(DDiTConfig, DDiTModel)
# A saved character tokenizer names its class in tokenizer_config.json; registering it lets AutoTokenizer rebuild it.
register_char_tokenizer(DDiTConfig)
