"""The LM head only where the loss is: logits at the masked positions instead of all B·L positions.

The diffusion loss, the ELBO and the VRPO scores need the logits of masked positions only (about half of them in
training). `MaskedHead` puts a forward pre-hook on the model's own output projection (`get_output_embeddings()`:
Llama's and GPT-2's tied `lm_head`, an encoder's decoder after its prediction transform, under LoRA too). During
`row_masked_ce` the hook keeps the projection's input (the final hidden states [B, L, H], after everything the model
does before its head) and lets the projection run on one position only, so the model's forward returns logits
[1, 1, V] and its compiled graph has the same static shapes at every step. The masked positions' hidden states are
then gathered and projected by the same module in chunks of CHUNK_ELEMENTS logits, each followed by its float32
cross-entropy; every chunk but the last is recomputed in the backward pass instead of kept, so at most one chunk's
[chunk, V] logits exist at a time, never all [K, V].

What a model does to its logits after the projection is re-applied from its config (Cohere's `logit_scale`,
Granite's `logits_scaling`, Gemma's `final_logit_softcapping`); on the first batch that one-position output of the
model's own forward is compared with it, so a model that transforms its logits in another way is refused instead of
trained with a wrong loss. On CUDA with Liger Kernel installed, and a plain `nn.Linear` projection, the projection and
the cross-entropy of each row are fused (`liger_fused_linear_cross_entropy`). Under FSDP2 the shard group holding the
projection is gathered for the head and the chunks call the module past FSDP's hooks; its backward reduces and
reshards it as usual.
"""

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .losses import masked_token_losses

CHUNK_ELEMENTS = 1 << 26  # logits entries per chunk of the head (256 MB in float32)

# masked_ce_fn(noisy_ids, targets, masked) -> Tensor[B]: Σ over each row's masked positions of CE(logits, target)
MaskedCeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def gather_plan(targets, masked, shift: bool):
    """Where the head runs and what it predicts: (hidden_index [K], token_targets [K], row_of [K]).

    The flat B·L index of the hidden state that predicts each masked token (shift: the position before it, as the
    model's logits at i-1 predict token i), the token, and its row.
    """
    length = masked.shape[1]
    if shift:  # position 0 has no predecessor: never scored (as masked_token_losses)
        masked = torch.cat([torch.zeros_like(masked[:, :1]), masked[:, 1:]], dim=1)
    slots = masked.reshape(-1).nonzero().squeeze(1)
    hidden_index = slots - 1 if shift else slots
    return hidden_index, targets.reshape(-1)[slots], torch.div(slots, length, rounding_mode="floor")


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
    forward); it stays registered and passes everything through outside `row_masked_ce`. `close()` removes it.
    """

    def __init__(self, model):
        base = unwrapped_model(model)
        self.model = model
        self.projection = base.get_output_embeddings()
        if self.projection is None:
            raise ValueError(
                f"{type(base).__name__} has no output projection (get_output_embeddings() is None): "
                "use --masked_head false."
            )
        config = base.config.get_text_config()
        # what the model's forward does to the projection's output (1 / None: nothing)
        self.scale = (getattr(config, "logit_scale", None) or 1.0) / (getattr(config, "logits_scaling", None) or 1.0)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        fusable = type(self.projection) is torch.nn.Linear and self.scale == 1.0
        self.liger = _liger_function() if fusable else None
        self.active = False  # inside row_masked_ce's forward: keep the hidden states, project one position
        self.hidden = self.probe = None  # what the hooks saw in that forward
        self.checked = False  # the model's own logits compared with head_logits once
        self._fsdp_owner = None  # the FSDP2 module that shards the projection's weight (found on the first batch)
        self._handles = [
            self.projection.register_forward_pre_hook(self._keep_hidden),
            self.projection.register_forward_hook(self._keep_probe),
        ]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _keep_hidden(self, module, args):
        if not self.active:
            return None
        hidden = args[0]
        self.hidden = hidden.reshape(-1, hidden.shape[-1])
        return (self.hidden[:1].unsqueeze(0), *args[1:])

    def _keep_probe(self, module, args, output):
        if self.active:
            self.probe = output

    def head_logits(self, hidden) -> torch.Tensor:
        """The model's logits for hidden states [N, H]: its projection, then what its forward does after it."""
        # under FSDP2 the weight is gathered in _run; through FSDP2's hooks the chunks crashed the backward pass
        project = self.projection.forward if self._fsdp_owner is not None else self.projection
        return self.after_projection(project(hidden))

    def after_projection(self, logits) -> torch.Tensor:
        """What the model's forward does to its projection's output (known from its config)."""
        if self.scale != 1.0:  # Cohere: logits · logit_scale; Granite: logits / logits_scaling
            logits = logits * self.scale
        if self.softcap:  # Gemma 2: cap · tanh(logits / cap)
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _token_ce(self, hidden, targets):
        return F.cross_entropy(self.head_logits(hidden).float(), targets, reduction="none")

    def _run(self, forward: Callable[[], torch.Tensor], batch_positions: int):
        """forward() with the hooks active: the final hidden states [B·L, H] and the projection's output at the one
        position it saw ([1, 1, V]); the model's own logits there are compared with after_projection once."""
        self.active, self.hidden, self.probe = True, None, None
        try:
            logits = forward()
        finally:
            self.active = False
        hidden, projected, self.hidden, self.probe = self.hidden, self.probe, None, None
        if hidden is None or logits.shape[:2] != (1, 1) or hidden.shape[0] != batch_positions:
            raise RuntimeError(
                f"--masked_head: the model returned logits of shape {tuple(logits.shape)} instead of "
                f"[1, 1, V] for {batch_positions} positions; its output projection did not run through "
                "the hook on every position (a model compiled before the trainer was built?). Use "
                "--masked_head false."
            )
        if not self.checked:
            self._fsdp_owner = self._find_fsdp_owner()
            self._check_after_projection(projected, logits)
        if self._fsdp_owner is not None:  # gathered until its backward (which reshards it), as in its own forward
            self._fsdp_owner.unshard()
        return hidden, projected

    def _find_fsdp_owner(self):
        """The innermost FSDP2 module holding the projection (its weight is all-gathered only in its forward)."""
        from torch.distributed.fsdp import FSDPModule

        owners = [
            module
            for module in self.model.modules()
            if isinstance(module, FSDPModule) and any(sub is self.projection for sub in module.modules())
        ]
        return owners[-1] if owners else None

    def _check_after_projection(self, projected, logits) -> None:
        """The model's logits equal after_projection(its projection's output), or an error naming the flag."""
        with torch.no_grad():
            ours, theirs = self.after_projection(projected).float(), logits.detach().float()
        tolerance = 1e-4 if projected.dtype == logits.dtype == torch.float32 else 2e-2
        if not torch.allclose(ours, theirs, rtol=tolerance, atol=tolerance * float(theirs.abs().max().clamp(min=1))):
            raise RuntimeError(
                "--masked_head: the model changes its logits after its output projection in a way "
                "this head does not reproduce (it knows logit_scale, logits_scaling and "
                "final_logit_softcapping from the config). Use --masked_head false."
            )
        self.checked = True

    def row_masked_ce(self, forward: Callable[[], torch.Tensor], targets, masked, shift: bool = False):
        """Σ_masked CE per row (Tensor[B], float32), as masked_token_losses(full logits).sum(1) computes it.

        forward(): the model's forward pass on the noisy batch, returning its logits (the hooks decide their shape).
        """
        batch_size = masked.shape[0]
        hidden, projected = self._run(forward, masked.numel())
        hidden_index, token_targets, row_of = gather_plan(targets, masked, shift)
        gathered = hidden.index_select(0, hidden_index)
        if self._use_fused(gathered):
            return self._fused_row_ce(gathered, token_targets, row_of, batch_size, projected.dtype)
        token_ce = self.chunked_token_ce(gathered, token_targets, vocab_size=projected.shape[-1])
        return torch.zeros(batch_size, device=token_ce.device).index_add(0, row_of, token_ce)

    def chunked_token_ce(self, hidden, targets, vocab_size: int) -> torch.Tensor:
        """Float32 CE of head_logits(hidden [K, H]) against targets [K], CHUNK_ELEMENTS logits at a time.

        The backward pass meets the chunks last to first: the last one keeps its tensors (they are freed before the
        next chunk is recomputed), the others are recomputed, so the peak stays one chunk.
        """
        rows = max(1, CHUNK_ELEMENTS // vocab_size)
        starts = range(0, max(len(hidden), 1), rows)  # one empty chunk when nothing is masked: the graph stays whole
        pieces = []
        for start in starts:
            chunk = (hidden[start : start + rows], targets[start : start + rows])
            recomputed = torch.is_grad_enabled() and start != starts[-1]
            pieces.append(
                checkpoint(self._token_ce, *chunk, use_reentrant=False) if recomputed else self._token_ce(*chunk)
            )
        return torch.cat(pieces)

    def _use_fused(self, hidden) -> bool:
        """Liger's kernel: installed, on CUDA, and the projection's weight a plain tensor (not an FSDP shard)."""
        return self.liger is not None and hidden.is_cuda and type(self.projection.weight.data) is torch.Tensor

    def _fused_row_ce(self, hidden, token_targets, row_of, batch_size: int, dtype) -> torch.Tensor:
        """Liger's fused projection + CE, one sum per row (its reduction is per call, the rows' weights differ)."""
        weight, bias = self.projection.weight, self.projection.bias
        if hidden.dtype != dtype:  # autocast: the projection ran in the dtype of its output
            hidden, weight = hidden.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        sums = [
            self.liger(
                hidden[row_of == row], weight, token_targets[row_of == row], bias, reduction="sum", softcap=self.softcap
            ).float()
            for row in range(batch_size)
        ]
        return torch.stack(sums)

    def masked_ce_fn(self, logits_of: Callable[[torch.Tensor], torch.Tensor], shift: bool = False) -> MaskedCeFn:
        """A masked_ce_fn for the ELBO: logits_of(noisy_ids) runs the model and returns its logits."""
        return lambda noisy, targets, masked: self.row_masked_ce(lambda: logits_of(noisy), targets, masked, shift)


def full_logits_ce_fn(logits_of: Callable[[torch.Tensor], torch.Tensor], shift: bool = False) -> MaskedCeFn:
    """A masked_ce_fn computing the full [B, L, V] logits first (--masked_head false, and the reference)."""
    return lambda noisy, targets, masked: masked_token_losses(logits_of(noisy), targets, masked, shift=shift).sum(1)


def masked_ce_fn(head: MaskedHead | None, logits_of, shift: bool = False) -> MaskedCeFn:
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
