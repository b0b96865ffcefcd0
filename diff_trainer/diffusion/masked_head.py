"""The LM head only where the loss is: logits at the masked positions instead of all B·L positions.

The diffusion loss, the ELBO and the VRPO scores need the logits of masked positions only (about half of them in
training). `MaskedHead` puts a forward pre-hook on the model's own output projection (`get_output_embeddings()`:
Llama's and GPT-2's tied `lm_head`, an encoder's decoder after its prediction transform, under LoRA too), which
gathers the projection's input at the wanted positions, so the model's forward returns logits [1, K, V] for K
positions. Everything before the projection (final norm, an encoder's transform) and after it (e.g. Gemma's logit
soft-capping) is the model's own code. The cross-entropy then runs in checkpointed chunks, so no float32 copy of the
[K, V] logits is kept for the backward pass.

K is the number of masked positions rounded up to a bucket (padding scores 0), so the compiled model sees a few
static shapes instead of one per batch (`--torch_compile`). On CUDA with Liger Kernel installed, and a plain
`nn.Linear` projection, the projection and the cross-entropy are fused (`liger_fused_linear_cross_entropy`) and the
[K, V] logits are never materialised.
"""

import contextlib
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..data.labels import IGNORE_INDEX
from .losses import masked_token_losses

BUCKETS_PER_BATCH = 16  # K is a multiple of B·L/16: at most 1/16 of the batch is padding, few distinct shapes
CHUNK_ELEMENTS = 1 << 26  # logits entries per cross-entropy chunk (256 MB in float32)
POST_PROJECTION_SCALES = ("logit_scale", "logits_scaling", "output_multiplier_scale")  # undone by the fused path

# masked_ce_fn(noisy_ids, targets, masked) -> Tensor[B]: Σ over each row's masked positions of CE(logits, target)
MaskedCeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def gather_plan(targets, masked, shift: bool, bucket: int):
    """Where the head runs and what it predicts, padded to a multiple of `bucket` entries.

    Returns (hidden_index [K], token_targets [K], row_of [K]): the flat B·L index of the hidden state that predicts
    each masked token (shift: the position before it, as the model's logits at i-1 predict token i), the token, and
    its row. Padding entries read position 0, target -100 (CE 0) and belong to row B (dropped).
    """
    batch_size, length = masked.shape
    if shift:  # position 0 has no predecessor: never scored (as masked_token_losses)
        masked = torch.cat([torch.zeros_like(masked[:, :1]), masked[:, 1:]], dim=1)
    slots = masked.reshape(-1).nonzero().squeeze(1)
    size = max(bucket, math.ceil(slots.numel() / bucket) * bucket)
    pad = size - slots.numel()
    hidden_index = F.pad(slots - 1 if shift else slots, (0, pad), value=0)
    token_targets = F.pad(targets.reshape(-1)[slots], (0, pad), value=IGNORE_INDEX)
    row_of = F.pad(torch.div(slots, length, rounding_mode="floor"), (0, pad), value=batch_size)
    return hidden_index, token_targets, row_of


def _token_ce(logits, targets):
    return F.cross_entropy(logits.float(), targets, reduction="none", ignore_index=IGNORE_INDEX)


def chunked_cross_entropy(logits, targets) -> torch.Tensor:
    """Float32 CE per row of logits [K, V] (0 where target = -100), in chunks recomputed in the backward pass."""
    rows = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    if not torch.is_grad_enabled() or not logits.requires_grad:
        return torch.cat([_token_ce(logits[i:i + rows], targets[i:i + rows]) for i in range(0, len(logits), rows)])
    return torch.cat([checkpoint(_token_ce, logits[i:i + rows], targets[i:i + rows], use_reentrant=False)
                      for i in range(0, len(logits), rows)])


def _liger_function():
    """Liger Kernel's fused linear cross-entropy, or None when it is not installed."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def unwrapped_model(model):
    """The transformers model under peft and torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.get_base_model() if hasattr(model, "disable_adapter") and hasattr(model, "get_base_model") else model


class MaskedHead:
    """The model's own output projection applied only at masked positions (see the module docstring).

    Build it before the model is compiled or wrapped (the hook must be in place when torch.compile traces the
    forward); it stays registered and passes everything through outside `masked_ce`. `close()` removes it.
    """

    def __init__(self, model):
        base = unwrapped_model(model)
        self.projection = base.get_output_embeddings()
        if self.projection is None:
            raise ValueError(f"{type(base).__name__} has no output projection (get_output_embeddings() is None): "
                             "use --masked_head false.")
        config = base.config.get_text_config()
        self.softcap = getattr(config, "final_logit_softcapping", None)
        fusable = type(self.projection) is torch.nn.Linear and not any(
            getattr(config, name, None) not in (None, 1, 1.0) for name in POST_PROJECTION_SCALES)
        self.liger = _liger_function() if fusable else None
        self.positions = None  # flat indices the hook gathers; None: pass-through
        self.captured = None  # the fused path: gathered hidden states, the projection sees none
        self._handle = self.projection.register_forward_pre_hook(self._gather)

    def close(self) -> None:
        self._handle.remove()

    def _gather(self, module, args):
        if self.positions is None:
            return None
        hidden = args[0]
        gathered = hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.positions).unsqueeze(0)
        if self.captured is not None:
            self.captured.append(gathered[0])
            gathered = gathered[:, :0]
        return (gathered, *args[1:])

    def _run(self, forward: Callable[[], torch.Tensor], positions, capture: bool) -> torch.Tensor:
        """forward() with the hook gathering `positions`: the model's logits [1, K, V] (fused: [1, 0, V])."""
        self.positions, self.captured = positions, ([] if capture else None)
        try:
            logits = forward()
        finally:
            self.positions = None
        expected = 0 if capture else len(positions)
        if logits.dim() != 3 or logits.shape[:2] != (1, expected):
            raise RuntimeError(f"--masked_head: the model returned logits of shape {tuple(logits.shape)} instead of "
                               f"[1, {expected}, V]; its output projection did not run through the gathering hook "
                               "(a model compiled before the trainer was built?). Use --masked_head false.")
        return logits

    def row_masked_ce(self, forward: Callable[[], torch.Tensor], targets, masked, shift: bool = False):
        """Σ_masked CE per row (Tensor[B], float32), as masked_token_losses(full logits).sum(1) computes it.

        forward(): the model's forward pass on the noisy batch, returning its logits (the hook decides their shape).
        """
        batch_size, length = masked.shape
        bucket = max(1, batch_size * length // BUCKETS_PER_BATCH)
        hidden_index, token_targets, row_of = gather_plan(targets, masked, shift, bucket)
        fused = self._use_fused(hidden_index)
        logits = self._run(forward, hidden_index, capture=fused)
        if fused:
            return self._fused_row_ce(self.captured.pop(), token_targets, row_of, batch_size, logits.dtype)
        token_ce = chunked_cross_entropy(logits[0], token_targets)
        return torch.zeros(batch_size + 1, device=token_ce.device).index_add(0, row_of, token_ce)[:batch_size]

    def _use_fused(self, positions) -> bool:
        """Liger's kernel: installed, on CUDA, and the projection's weight a plain tensor (not an FSDP shard)."""
        return self.liger is not None and positions.is_cuda and type(self.projection.weight.data) is torch.Tensor

    def _fused_row_ce(self, hidden, token_targets, row_of, batch_size: int, dtype) -> torch.Tensor:
        """Liger's fused projection + CE, one sum per row (its reduction is per call, the rows' weights differ)."""
        weight, bias = self.projection.weight, self.projection.bias
        if hidden.dtype != dtype:  # autocast: the projection would have run in the logits' dtype
            hidden, weight = hidden.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        sums = [self.liger(hidden[row_of == row], weight, token_targets[row_of == row], bias, reduction="sum",
                           softcap=self.softcap).float() for row in range(batch_size)]
        return torch.stack(sums)

    def masked_ce_fn(self, logits_of: Callable[[torch.Tensor], torch.Tensor], shift: bool = False) -> MaskedCeFn:
        """A masked_ce_fn for the ELBO: logits_of(noisy_ids) runs the model and returns its logits."""
        return lambda noisy, targets, masked: self.row_masked_ce(lambda: logits_of(noisy), targets, masked, shift)


def full_logits_ce_fn(logits_of: Callable[[torch.Tensor], torch.Tensor], shift: bool = False) -> MaskedCeFn:
    """A masked_ce_fn computing the full [B, L, V] logits first (--masked_head false, and the reference)."""
    return lambda noisy, targets, masked: masked_token_losses(logits_of(noisy), targets, masked, shift=shift).sum(1)


def masked_ce_fn(head: Optional[MaskedHead], logits_of, shift: bool = False) -> MaskedCeFn:
    """The masked-head scorer when `head` is given, else the full-logits one."""
    return head.masked_ce_fn(logits_of, shift) if head is not None else full_logits_ce_fn(logits_of, shift)


@contextlib.contextmanager
def masked_head_for(model, enabled: bool):
    """A MaskedHead on `model` for the block (None when not `enabled`), removed afterwards."""
    head = MaskedHead(model) if enabled else None
    try:
        yield head
    finally:
        if head is not None:
            head.close()
