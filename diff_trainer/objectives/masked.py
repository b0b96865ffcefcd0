"""Masked (absorbing) diffusion as a training objective: the forward process applied to a batch of clean rows with
one seeded generator per batch, the loss, the ELBO, and the model preparation (full attention, `diffusion_config`).

Data loaders yield clean rows; `DiffusionTrainer` noises each micro-batch with a generator seeded by (run seed,
global step, micro-batch index, process index), so a resumed run, gradient accumulation and DDP draw exactly the
masks and times of an uninterrupted single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.labels import IGNORE_INDEX
from ..data.preference import CountMasks
from ..diffusion.elbo import elbo_nll_of, elbo_terms, monte_carlo_copies
from ..diffusion.forward import mask_tokens, replace_prompt_with_mask, sample_times, truncate_random_length
from ..diffusion.losses import diffusion_loss, masked_token_losses
from ..diffusion.masked_head import MaskedHead, masked_ce_fn, unwrapped_model
from ..diffusion.schedules import SCHEDULES, NoiseSchedule, get_schedule
from ..diffusion_config import MASKED, read_diffusion_config, write_diffusion_config
from ..models.bidirectional import is_encoder_model, make_bidirectional
from .base import Objective


def mixed_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (e.g. run seed, step, micro-batch, process)."""
    state = np.random.SeedSequence([int(part) for part in parts]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by `mixed_seed(*parts)` (draws are moved to the batch's device)."""
    return torch.Generator().manual_seed(mixed_seed(*parts))


PREFIX_SHUFFLE_UNITS = ("none", "segments", "tokens")


@dataclass(frozen=True)
class PrefixShuffler:
    """Permutes the units of every document's prefix (the attended positions with label -100, before `<DFF>`).

    unit "tokens": every token is a unit; "segments": the parts between occurrences of `separator_ids` (e.g. the
    keywords of a cascade stage's prefix), without the blank tokens at their edges. Tokens in `fixed_ids`
    (special tokens; with segments also blanks) and separators keep their positions, so a row keeps its length,
    its multiset of tokens and everything outside the prefix. In a packed row each document's prefix is one run
    and is permuted on its own. One `randperm` per run with two or more units, drawn from the batch's generator.
    """

    unit: str
    separator_ids: tuple[int, ...] = ()
    fixed_ids: frozenset = frozenset()

    def __call__(
        self, ids: torch.Tensor, labels: torch.Tensor, attention: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        shuffled = ids.clone()
        prefix = ((labels == IGNORE_INDEX) & attention.bool()).int()
        zero = torch.zeros_like(prefix[:, :1])
        edges = torch.diff(prefix, prepend=zero, append=zero)  # +1 where a run starts, -1 one past its end
        rows = ids.tolist()
        for row in range(len(rows)):
            starts, ends = (edges[row] == 1).nonzero().flatten(), (edges[row] == -1).nonzero().flatten()
            for start, end in zip(starts.tolist(), ends.tolist()):
                pieces = self.pieces(rows[row][start:end])
                units = [piece for piece, movable in pieces if movable]
                if len(units) < 2:
                    continue
                order = iter(torch.randperm(len(units), generator=generator).tolist())
                new = [token for piece, movable in pieces for token in (units[next(order)] if movable else piece)]
                shuffled[row, start:end] = torch.tensor(new, dtype=ids.dtype)
        return shuffled

    def pieces(self, tokens: list[int]) -> list[tuple[list[int], bool]]:
        """The run cut into (tokens, movable) pieces, in order."""
        if self.unit == "tokens":
            return [([token], token not in self.fixed_ids) for token in tokens]
        pieces, segment, width, index = [], [], len(self.separator_ids), 0
        while index < len(tokens):
            if width and tuple(tokens[index : index + width]) == self.separator_ids:
                pieces += self.segment_pieces(segment) + [(list(self.separator_ids), False)]
                segment, index = [], index + width
            else:
                segment.append(tokens[index])
                index += 1
        return pieces + self.segment_pieces(segment)

    def segment_pieces(self, segment: list[int]) -> list[tuple[list[int], bool]]:
        """A segment as its fixed leading tokens, its movable core and its fixed trailing tokens."""
        first = next((i for i, token in enumerate(segment) if token not in self.fixed_ids), len(segment))
        last = next((i for i in range(len(segment), first, -1) if segment[i - 1] not in self.fixed_ids), first)
        core = [(segment[first:last], True)] if last > first else []
        return [(segment[:first], False), *core, (segment[last:], False)]


def prefix_shuffler(tokenizer, unit: str, separator: str) -> PrefixShuffler | None:
    """The shuffler of --prefix_shuffle UNIT (None for "none"): the separator's ids and the ids that never move."""
    if unit == "none":
        return None
    fixed = set(tokenizer.all_special_ids)
    if unit == "tokens":
        return PrefixShuffler(unit, fixed_ids=frozenset(fixed))
    texts = tokenizer.batch_decode([[index] for index in range(len(tokenizer))])
    fixed.update(index for index, text in enumerate(texts) if text.isspace())
    separator_ids = tuple(tokenizer(separator, add_special_tokens=False)["input_ids"])
    return PrefixShuffler(unit, separator_ids, frozenset(fixed))


def check_prefix_separator(shuffler: PrefixShuffler, rows, separator: str) -> None:
    """A ValueError when no prefix of `rows` (dicts of input_ids, labels) holds the separator: the flag would be
    a no-op on this data."""
    width = len(shuffler.separator_ids)
    for row in rows:
        prefix = [token for token, label in zip(row["input_ids"], row["labels"]) if label == IGNORE_INDEX]
        if any(tuple(prefix[i : i + width]) == shuffler.separator_ids for i in range(len(prefix) - width + 1)):
            return
    raise ValueError(
        f"--prefix_shuffle segments: no prefix of the first {len(rows)} training rows contains "
        f"--prefix_separator {separator!r} (ids {list(shuffler.separator_ids)}); pass the separator "
        "the data uses (make_cascade_data.py --separator), or --prefix_shuffle tokens."
    )


@dataclass(frozen=True)
class BatchNoiser:
    """Turns a batch of clean rows (`input_ids`, `labels`, `attention_mask`) into a noised training batch.

    Output keys: `input_ids` (noised), `attention_mask`, `clean_ids` (the rows as given, their prefixes permuted
    when there is a `prefix_shuffler`), `maskable` (label !=
    -100: positions that may be masked; the prompt and ignored padding never are), `masked` (positions replaced
    by the mask) and `loss_weight` (per row, the schedule's weight at its time t).
    """

    mask_token_id: int
    schedule: NoiseSchedule
    antithetic_time: bool = True
    random_length_prob: float = 0.0
    prompt_dropout: float = 0.0
    prefix_shuffler: PrefixShuffler | None = None

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        clean, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
        if self.prefix_shuffler is not None:
            clean = self.prefix_shuffler(clean, labels, attention, generator)
        if self.random_length_prob > 0:
            labels, attention = truncate_random_length(labels, attention, self.random_length_prob, generator)
        maskable = labels != IGNORE_INDEX
        times = sample_times(len(clean), antithetic=self.antithetic_time, generator=generator, device=clean.device)
        noisy, masked = mask_tokens(clean, maskable, self.schedule.mask_prob(times), self.mask_token_id, generator)
        if self.prompt_dropout > 0:
            prompt = ~maskable & attention.bool()
            noisy, _ = replace_prompt_with_mask(noisy, prompt, self.mask_token_id, self.prompt_dropout, generator)
        return {
            "input_ids": noisy,
            "attention_mask": attention,
            "clean_ids": clean,
            "maskable": maskable,
            "masked": masked,
            "loss_weight": self.schedule.loss_weight(times),
        }


def elbo_samples(
    logits_fn, inputs, num_samples: int, shift: bool = False, prefix: str = "", head: MaskedHead = None
) -> torch.Tensor:
    """The n ELBO terms of every sequence of a `PreferenceCollator` batch noised by `CountMasks`: Tensor[2B, n]
    (nats, higher = likelier; LLaDA eq. 14 per term, VRPO's scores).

    `prefix` "ref_" selects the reference's own masks when they are not shared. `head`: the model's MaskedHead
    (logits only at masked positions), or None for full logits.
    """
    clean = monte_carlo_copies(inputs["input_ids"], num_samples)
    maskable = monte_carlo_copies(inputs["maskable"], num_samples)
    terms = elbo_terms(
        masked_ce_fn(head, logits_fn, shift),
        clean,
        maskable,
        inputs[f"{prefix}noisy_ids"],
        inputs[f"{prefix}masked"],
        inputs[f"{prefix}mask_counts"],
    )
    return terms.reshape(-1, num_samples)


def model_logits(model, attention_mask, num_samples: int):
    """logits_fn for `elbo_samples`: the model on noisy rows, each row's attention repeated for its n copies."""
    attention = monte_carlo_copies(attention_mask, num_samples)
    return lambda noisy_ids: model(input_ids=noisy_ids, attention_mask=attention).logits


class MaskedDiffusion(Objective):
    """Masked diffusion (LLaDA / MDLM): tokens replaced by the mask id at rate p_mask(t), the 1/t-weighted
    cross-entropy at the masked positions, LLaDA's ELBO with stratified mask counts (eq. 14)."""

    names = (MASKED,)
    title = "masked diffusion"
    sampler = "masked"
    scores_preferences = True
    preference_head = True

    def __init__(
        self,
        mask_token_id: int,
        shift: bool,
        train_noiser: BatchNoiser,
        eval_noiser: BatchNoiser,
        masked_head: MaskedHead | None,
    ):
        self.mask_token_id, self.shift = mask_token_id, shift
        self.train_noiser, self.eval_noiser, self.masked_head = train_noiser, eval_noiser, masked_head

    @classmethod
    def flags_in_use(cls, args) -> dict[str, bool]:
        return {
            "shift_logits": args.shift_logits,
            "attention_annealing_steps": args.attention_annealing_steps > 0,
            "prompt_dropout": args.prompt_dropout > 0,
            "random_length_prob": args.random_length_prob > 0,
            "prefix_shuffle": args.prefix_shuffle != "none",
            "masked_head": args.masked_head is not None,
            "isolate_documents": args.isolate_documents,
            "noise_schedule": args.noise_schedule != "linear",
        }

    @classmethod
    def check_arguments(cls, args) -> None:
        if args.prefix_shuffle not in PREFIX_SHUFFLE_UNITS:
            raise ValueError(f"--prefix_shuffle must be one of {PREFIX_SHUFFLE_UNITS}, got {args.prefix_shuffle!r}")
        if args.noise_schedule not in SCHEDULES:
            raise ValueError(f"--noise_schedule must be one of {', '.join(SCHEDULES)}, got {args.noise_schedule!r}.")

    @classmethod
    def settings(cls, args, name: str) -> dict:
        return {"shift_logits": args.shift_logits, "noise_schedule": args.noise_schedule, "time_eps": args.time_eps}

    @classmethod
    def prepare_model(cls, model, tokenizer, settings: dict, *, masked_lm: bool, auto_class: str):
        """Full attention, and the mask id, shift, schedule, <DFF> and row layout recorded in `diffusion_config`."""
        make_bidirectional(model)
        if settings.get("shift_logits") and is_encoder_model(model):
            raise ValueError("--shift_logits adapts a causal LM; an encoder (masked LM) predicts its own position.")
        recorded = {name: value for name, value in settings.items() if name != "objective"}
        write_diffusion_config(model.config, mask_token_id=tokenizer.mask_token_id, auto_class=auto_class, **recorded)
        return model

    @classmethod
    def from_model(cls, model, args=None, prefix_shuffler=None) -> MaskedDiffusion:
        """With `args`: the training noisers (schedule, antithetic times, random lengths, prompt dropout, prefix
        shuffling, --eval_prefix_shuffle) and --masked_head; without: the checkpoint's settings, for evaluation."""
        diffusion_config = read_diffusion_config(unwrapped_model(model).config)
        mask_token_id = diffusion_config["mask_token_id"]
        if args is None:
            has_head = unwrapped_model(model).get_output_embeddings() is not None
            schedule = get_schedule(
                diffusion_config.get("noise_schedule", "linear"), diffusion_config.get("time_eps", 1e-3)
            )
            noiser = BatchNoiser(mask_token_id, schedule)
            return cls(
                mask_token_id,
                bool(diffusion_config.get("shift_logits", False)),
                noiser,
                noiser,
                MaskedHead(model) if has_head else None,
            )
        schedule = get_schedule(args.noise_schedule, args.time_eps)
        eval_shuffler = prefix_shuffler if args.eval_prefix_shuffle else None
        return cls(
            mask_token_id,
            args.shift_logits,
            BatchNoiser(
                mask_token_id,
                schedule,
                args.antithetic_time,
                args.random_length_prob,
                args.prompt_dropout,
                prefix_shuffler,
            ),
            BatchNoiser(mask_token_id, schedule, args.antithetic_time, prefix_shuffler=eval_shuffler),
            MaskedHead(model) if args.masked_head is not False else None,
        )

    def loss(
        self, model, inputs: dict, normalization: str, total_denominator=None, attention=None, with_logits: bool = False
    ):
        attention = inputs["attention_mask"] if attention is None else attention
        clean, masked = inputs["clean_ids"], inputs["masked"]
        logits = None
        if with_logits or self.masked_head is None:  # evaluation metrics need every position's logits
            logits = model(input_ids=inputs["input_ids"], attention_mask=attention).logits
            row_ce = masked_token_losses(logits, clean, masked, shift=self.shift).sum(dim=1)
        else:
            row_ce = self.masked_head.row_masked_ce(
                lambda: model(input_ids=inputs["input_ids"], attention_mask=attention).logits, clean, masked, self.shift
            )
        loss = diffusion_loss(
            row_ce,
            inputs["loss_weight"],
            masked,
            inputs["maskable"],
            normalization,
            total_denominator=total_denominator,
        )
        return loss, logits

    def elbo_nll(
        self,
        model,
        input_ids,
        attention_mask,
        maskable,
        num_samples: int,
        generator,
        *,
        attention_for=None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        attention = self.copies_attention(input_ids, attention_mask, num_samples, attention_for)

        def row_ce(noisy, targets, masked):
            size = chunk_size or len(noisy)
            parts = []
            for start in range(0, len(noisy), size):
                rows = slice(start, start + size)
                copies = None if attention is None else attention[rows]
                score = masked_ce_fn(
                    self.masked_head,
                    lambda ids, copies=copies: model(input_ids=ids, attention_mask=copies).logits,
                    self.shift,
                )
                parts.append(score(noisy[rows], targets[rows], masked[rows]))
            return torch.cat(parts)

        return elbo_nll_of(row_ce, input_ids, maskable, self.mask_token_id, num_samples, generator=generator)

    def preference_noise(self) -> CountMasks:
        """LLaDA's count form: l ~ U{1..L} of the response's L tokens masked, stratified over the n copies."""
        return CountMasks(self.mask_token_id)

    def preference_terms(self, model, inputs: dict, num_samples: int, *, prefix: str = "", head=None) -> torch.Tensor:
        logits_fn = model_logits(model, inputs["attention_mask"], num_samples)
        return elbo_samples(logits_fn, inputs, num_samples, self.shift, prefix, head)

    @torch.no_grad()
    def greedy(self, model, context_ids: list[int], continuation_ids: list[int]) -> bool:
        """One forward pass with the whole continuation masked predicts exactly the continuation (argmax)."""
        device = next(model.parameters()).device
        ids = torch.tensor([context_ids + [self.mask_token_id] * len(continuation_ids)], device=device)
        predicted = model(input_ids=ids).logits.argmax(-1)[0]
        if self.shift:  # logits at i predict token i + 1
            predicted = torch.cat([predicted[:1], predicted[:-1]])
        return predicted[len(context_ids) :].tolist() == continuation_ids
