"""Custom attention masks: annealing (DiffuLLaMA) and document isolation for packed rows.

Annealing moves a causal model towards full attention during adaptation: each query i sees every key j ≤ i plus each
future key with probability `ratio`; the ratio grows linearly from 0 to 1 over the first N training steps.

Document isolation: a packed row holds several EOS-terminated documents; with it, a token attends only to the
tokens of its own document (a block-diagonal mask per row), both ways. Documents are read off the EOS ids, or given
as `documents` (each token's document index, recorded at packing) where EOS also occurs inside a document
(conversations whose template ends turns with it).

Both are built as boolean "allowed" masks [B, 1, L, L], combined with AND, and passed to the model as one float
additive 4D mask (`additive_mask`); under FlexAttention, isolation is a BlockMask (`document_block_mask`).
"""

import torch


def annealing_ratio(step: int, anneal_steps: int) -> float:
    """r = min(1, step / N); N = 0 means no annealing (r = 1)."""
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, step / anneal_steps)


def annealed_allowed(attention_mask_2d, ratio: float, generator=None) -> torch.Tensor:
    """Bool [B, 1, L, L]: (j ≤ i OR Bernoulli(ratio)) AND key j is not padding, drawn independently per row."""
    batch_size, length = attention_mask_2d.shape
    device = attention_mask_2d.device
    if ratio >= 1.0:
        allowed = torch.ones(batch_size, 1, length, length, dtype=torch.bool, device=device)
    else:
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        draw_device = generator.device if generator is not None else device
        coin = torch.rand(batch_size, 1, length, length, generator=generator, device=draw_device).to(device)
        allowed = causal | (coin < ratio)  # DiffuLLaMA: causal OR Bernoulli(r) future edges
    return allowed & attention_mask_2d.bool()[:, None, None, :]


def document_ids(input_ids, eos_token_ids) -> torch.Tensor:
    """Index of each token's document within its row: EOS closes a document (and belongs to it). Tensor[B, L]."""
    is_eos = torch.isin(input_ids, torch.as_tensor(eos_token_ids, device=input_ids.device)).long()
    return is_eos.cumsum(dim=1) - is_eos


def same_document_allowed(input_ids, attention_mask_2d, eos_token_ids, documents=None) -> torch.Tensor:
    """Bool [B, 1, L, L]: query i may see key j iff both are in the same document and j is not padding."""
    documents = document_ids(input_ids, eos_token_ids) if documents is None else documents
    same = documents[:, :, None] == documents[:, None, :]  # block-diagonal per row
    return (same & attention_mask_2d.bool()[:, None, :])[:, None]


def document_block_mask(input_ids, attention_mask_2d, eos_token_ids, documents=None):
    """`same_document_allowed` as a FlexAttention BlockMask (models loaded with attn_implementation="flex_attention"):
    blocks without any allowed pair are skipped instead of computed and masked."""
    from torch.nn.attention.flex_attention import create_block_mask

    documents = document_ids(input_ids, eos_token_ids) if documents is None else documents
    keys = attention_mask_2d.bool()

    def same_document(batch, head, query, key):
        return (documents[batch, query] == documents[batch, key]) & keys[batch, key]

    batch_size, length = input_ids.shape
    return create_block_mask(same_document, batch_size, None, length, length, device=input_ids.device)


def additive_mask(allowed, dtype=torch.float32) -> torch.Tensor:
    """Float-additive 4D mask: 0 where allowed, finfo(dtype).min where not.

    Pass it as `model(input_ids, attention_mask=mask)` to a transformers 5 model: a 4D mask is used as-is (no causal
    or padding mask is added on top), under both "eager" and "sdpa". Use `dtype` = the model's dtype (sdpa requires
    the float mask to match the query dtype), and a float mask, not bool (eager adds the mask to the scores).
    """
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def annealed_attention_mask(attention_mask_2d, ratio: float, generator=None, dtype=torch.float32) -> torch.Tensor:
    """The annealed mask (`annealed_allowed`) as a float additive 4D mask [B, 1, L, L] (`additive_mask`)."""
    return additive_mask(annealed_allowed(attention_mask_2d, ratio, generator), dtype)
