"""Log-probabilities of a sampled completion under a masked diffusion LM, for policy-gradient RL (GRPO, wd1).

A diffusion LM gives no exact log π(o | p), so RL methods estimate it from masked forward passes. Three estimators,
each split into a draw (the noisy inputs, from a seeded generator) and a score (one model's log-probabilities on
that draw), so the current, old and reference policies can be scored on exactly the same masks:

    one_step  (d1 / diffu-GRPO)  the whole completion masked, each prompt token masked with prob p_mask_prompt;
                                 log π(o_k) ≈ log p(o_k | masked input), one pass.       per token  [B, T]
    coupled   (DiffuCoder)       t ~ U(0.2, 0.8) per row, a completion mask M of rate t and its complement, plus
                                 the fully masked pass: ½ [ℓ⁰_k + ℓ¹_k / t] for k in M, ½ [ℓ⁰_k + ℓ²_k / (1 − t)]
                                 otherwise; every completion token is masked in exactly one of the two coupled
                                 passes; the prompt is never masked.                       per token  [B, T]
    elbo      (LLaDA 1.5 VRPO)   the antithetic Monte-Carlo ELBO of the whole completion: n masked-token counts
                                 stratified over 1..L, exactly l_j tokens masked, (1/n) Σ_j −(L/l_j) Σ_masked CE.
                                                                                            per sequence [B]
    elbo, block diffusion        the block NELBO (BD3-LM): in each of n copies every block draws its own time t_b
                                 (stratified over the copies' blocks), its completion tokens are masked with the
                                 schedule's probability at t_b and weighted w(t_b); (1/n) Σ_j Σ_masked −w·CE.
                                                                                            per sequence [B]

Layout. Rows are prompt + completion in one tensor `input_ids` [B, T] with any padding; `prompt_mask` marks the real
prompt tokens and `completion_mask` the completion tokens (the ones masked and scored). Other positions (padding)
are never masked. A draw of k passes holds k noisy copies of every row, row b·k + j being pass j of row b
(`monte_carlo_copies`); `logits_fn(noisy_ids [B·k, T]) -> logits [B·k, T, V]` runs one policy on them (the caller
repeats each row's attention mask k times). Per-token results are 0 outside `completion_mask`.

Block diffusion. The same draws and scores serve a block-diffusion checkpoint when `logits_fn` runs the block
objective's forward over [noisy ; clean] and returns the logits at each position as a plain model's would be; rows
then start at column 0 (blocks are aligned to positions) and fill whole blocks. one_step masks the prompt nowhere
there (the prompt is the clean context of later blocks), and elbo takes the block draw (`draw_block_elbo`).

Seeding. `generator` is one torch.Generator (rows drawn in order from it) or one per row; `mask_generators` seeds
them from (seed, step, iteration, row), so the same rollout scored at generation time (old, reference) and again at
training time (current) gets the same masks, and a row's masks do not depend on its batch or process.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .block import noise_blocks
from .elbo import elbo_terms, monte_carlo_copies
from .forward import _uniform, mask_exact_count, stratified_mask_counts
from .losses import masked_token_losses
from .masked_head import full_logits_ce_fn

LOGP_ESTIMATORS = ("one_step", "coupled", "elbo")
COUPLED_TIME_RANGE = (0.2, 0.8)  # DiffuCoder coupled_grpo.py: t ~ U(0.2, 0.8)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class MaskDraw:
    """The noisy inputs of one estimator for a batch: k passes per row, row b·k + j is pass j of row b.

    `masked` [B·k, T]: the positions scored in each pass; `weights` [B·k]: the factor of each pass's log-probs in the
    per-token sum (one_step, coupled); `counts` [B·k]: masked tokens per pass (elbo); `token_weights` [B·k, T]: the
    weight w(t_b) of each position's block (block elbo).
    """

    noisy_ids: torch.Tensor
    masked: torch.Tensor
    weights: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None


def mask_generators(seed: int, step: int, iteration: int, rows: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per row, seeded from (seed, step, iteration, row): `step` names the rollouts (the step that
    generated them), `iteration` the reuse of those rollouts (0..num_iterations−1), `row` a rollout's global index."""
    generators = []
    for row in rows:
        state = np.random.SeedSequence([seed, step, iteration, row]).generate_state(2, np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1))
    return generators


def _row_generators(generator: Generators, rows: int) -> list:
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * rows
    if len(generator) != rows:
        raise ValueError(f"{len(generator)} generators for {rows} rows: pass one per row, or a single generator.")
    return list(generator)


def _row_uniform(generators: list, length: int, device) -> torch.Tensor:
    """U[0,1) [B, length], row b drawn from generators[b]."""
    return torch.stack([_uniform((length,), generator, device) for generator in generators])


def draw_one_step(
    input_ids,
    prompt_mask,
    completion_mask,
    mask_token_id: int,
    generator: Generators = None,
    *,
    p_mask_prompt: float = 0.0,
) -> MaskDraw:
    """d1's single pass: every completion token masked, each prompt token with probability p_mask_prompt."""
    coin = _row_uniform(_row_generators(generator, input_ids.shape[0]), input_ids.shape[1], input_ids.device)
    noised = completion_mask | (prompt_mask & (coin < p_mask_prompt))  # d1 forward_process
    noisy = torch.where(noised, mask_token_id, input_ids)
    return MaskDraw(noisy, completion_mask.clone(), weights=torch.ones(input_ids.shape[0], device=input_ids.device))


def coupled_masks(completion_mask, generator: Generators = None):
    """DiffuCoder's coupled pair: per row t ~ U(0.2, 0.8) and a mask M of rate t over the completion, and M's
    complement within the completion. Returns (M, complement, t [B])."""
    batch_size, length = completion_mask.shape
    device = completion_mask.device
    draws = [
        (_uniform((), g, device), _uniform((length,), g, device)) for g in _row_generators(generator, batch_size)
    ]  # row after row: its t, then its coins
    low, high = COUPLED_TIME_RANGE
    times = torch.stack([u for u, _ in draws]) * (high - low) + low
    coin = torch.stack([c for _, c in draws])
    first = completion_mask & (coin < times.unsqueeze(1))
    return first, completion_mask & ~first, times


def draw_coupled(input_ids, prompt_mask, completion_mask, mask_token_id: int, generator: Generators = None) -> MaskDraw:
    """Three passes per row: the completion fully masked, then the coupled pair M and its complement, weighted
    ½, ½/t and ½/(1−t) (DiffuCoder coupled_grpo.py selective_log_softmax). The prompt stays clean."""
    first, second, times = coupled_masks(completion_mask, generator)
    masked = torch.stack([completion_mask, first, second], dim=1).flatten(0, 1)  # [B·3, T], row b·3 + j
    noisy = torch.where(masked, mask_token_id, monte_carlo_copies(input_ids, 3))
    weights = torch.stack([torch.ones_like(times), 1.0 / times, 1.0 / (1.0 - times)], dim=1).flatten() / 2
    return MaskDraw(noisy, masked, weights=weights)


def draw_elbo(
    input_ids, completion_mask, mask_token_id: int, generator: Generators = None, *, num_samples: int = 8
) -> MaskDraw:
    """VRPO's n noisy copies of every completion: counts l_j ~ U{1..L} stratified over the copies, then exactly l_j
    completion tokens masked (LLaDA eq. 14), row after row from its generator (the draw of the preference collator's
    noise_response, so a row equals that pair's response scored with the same generator)."""
    batch_size, length = input_ids.shape
    noisy = monte_carlo_copies(input_ids, num_samples).clone()
    masked = torch.zeros(batch_size * num_samples, length, dtype=torch.bool, device=input_ids.device)
    counts = torch.zeros(batch_size * num_samples, dtype=torch.long, device=input_ids.device)
    for row, row_generator in enumerate(_row_generators(generator, batch_size)):
        positions = completion_mask[row].nonzero().flatten()
        rows = slice(row * num_samples, (row + 1) * num_samples)
        row_counts = stratified_mask_counts(len(positions), num_samples, generator=row_generator).reshape(-1)
        copies = input_ids[row, positions].unsqueeze(0).expand(num_samples, len(positions))
        row_noisy, row_masked = mask_exact_count(
            copies, torch.ones_like(copies, dtype=torch.bool), row_counts, mask_token_id, row_generator
        )
        noisy[rows, positions], masked[rows, positions] = row_noisy, row_masked
        counts[rows] = row_counts.to(counts.device)
    return MaskDraw(noisy, masked, counts=counts)


def draw_block_elbo(
    input_ids,
    completion_mask,
    mask_token_id: int,
    block_size: int,
    schedule,
    generator: Generators = None,
    *,
    num_samples: int = 8,
) -> MaskDraw:
    """n noisy copies of every row for the block NELBO (`block.noise_blocks`: one time per block, stratified over the
    copies' blocks, completion tokens masked per block), row after row from its generator. Rows start at column 0
    and their length is a multiple of `block_size`."""
    noisy, masked, weights = [], [], []
    for row, row_generator in enumerate(_row_generators(generator, input_ids.shape[0])):
        copies = input_ids[row].unsqueeze(0).expand(num_samples, -1)
        labels = copies.masked_fill(~completion_mask[row], -100)
        drawn = noise_blocks(copies, labels, schedule, block_size, mask_token_id, generator=row_generator)
        noisy.append(drawn["noisy_ids"])
        masked.append(drawn["masked"])
        weights.append(drawn["loss_weight"].repeat_interleave(block_size, dim=1))  # w(t_b) at each of b's positions
    return MaskDraw(torch.cat(noisy), torch.cat(masked), token_weights=torch.cat(weights))


def token_logps(logits_fn: LogitsFn, input_ids, draw: MaskDraw, *, shift: bool = False) -> torch.Tensor:
    """Per-token log-probabilities [B, T] of a one_step or coupled draw: Σ_j weight_j · log p_j(x_k) over the passes
    j that mask position k (0 where no pass does)."""
    passes = draw.noisy_ids.shape[0] // input_ids.shape[0]
    logps = -masked_token_losses(
        logits_fn(draw.noisy_ids), monte_carlo_copies(input_ids, passes), draw.masked, shift=shift
    )
    weighted = logps * draw.weights.to(logps.dtype).unsqueeze(1)
    return weighted.reshape(input_ids.shape[0], passes, -1).sum(dim=1)


def elbo_logps(logits_fn: LogitsFn, input_ids, completion_mask, draw: MaskDraw, *, shift: bool = False) -> torch.Tensor:
    """The ELBO of every completion [B] on an elbo draw (a lower bound on log π(o | p), VRPO's B̂; on a block draw
    the negative block NELBO)."""
    passes = draw.noisy_ids.shape[0] // input_ids.shape[0]
    if draw.token_weights is not None:  # BD3-LM: Σ_b w(t_b) Σ_{masked in b} log p, per copy
        logps = -masked_token_losses(
            logits_fn(draw.noisy_ids), monte_carlo_copies(input_ids, passes), draw.masked, shift=shift
        )
        terms = (logps * draw.token_weights.to(logps.dtype)).sum(dim=1)
        return terms.reshape(input_ids.shape[0], passes).mean(dim=1)
    terms = elbo_terms(
        full_logits_ce_fn(logits_fn, shift),
        monte_carlo_copies(input_ids, passes),
        monte_carlo_copies(completion_mask, passes),
        draw.noisy_ids,
        draw.masked,
        draw.counts,
    )
    return terms.reshape(input_ids.shape[0], passes).mean(dim=1)  # VRPO B̂ = (1/n) Σ_j ℓ_j


def draw_masks(
    estimator: str,
    input_ids,
    prompt_mask,
    completion_mask,
    mask_token_id: int,
    generator: Generators = None,
    *,
    p_mask_prompt: float = 0.0,
    num_samples: int = 8,
    block=None,
) -> MaskDraw:
    """The draw of `estimator` (one of LOGP_ESTIMATORS) for a batch; `block` = (block size, schedule) of a
    block-diffusion checkpoint."""
    if estimator == "elbo" and block is not None:
        return draw_block_elbo(input_ids, completion_mask, mask_token_id, *block, generator, num_samples=num_samples)
    if estimator == "one_step":
        return draw_one_step(
            input_ids, prompt_mask, completion_mask, mask_token_id, generator, p_mask_prompt=p_mask_prompt
        )
    if estimator == "coupled":
        return draw_coupled(input_ids, prompt_mask, completion_mask, mask_token_id, generator)
    if estimator == "elbo":
        return draw_elbo(input_ids, completion_mask, mask_token_id, generator, num_samples=num_samples)
    raise ValueError(f"unknown log-probability estimator {estimator!r}; valid: {', '.join(LOGP_ESTIMATORS)}")


def score_draw(
    estimator: str, logits_fn: LogitsFn, input_ids, completion_mask, draw: MaskDraw, *, shift: bool = False
) -> torch.Tensor:
    """One policy's log-probabilities on `draw`: per token [B, T] (one_step, coupled) or per sequence [B] (elbo)."""
    if estimator == "elbo":
        return elbo_logps(logits_fn, input_ids, completion_mask, draw, shift=shift)
    return token_logps(logits_fn, input_ids, draw, shift=shift)


def policy_logps(
    estimator: str,
    logits_fns: Sequence[LogitsFn],
    input_ids,
    prompt_mask,
    completion_mask,
    mask_token_id: int,
    generator: Generators = None,
    *,
    shift: bool = False,
    p_mask_prompt: float = 0.0,
    num_samples: int = 8,
) -> list[torch.Tensor]:
    """Every policy of `logits_fns` (e.g. current, old, reference) scored on one shared draw of `estimator`."""
    draw = draw_masks(
        estimator,
        input_ids,
        prompt_mask,
        completion_mask,
        mask_token_id,
        generator,
        p_mask_prompt=p_mask_prompt,
        num_samples=num_samples,
    )
    return [score_draw(estimator, logits_fn, input_ids, completion_mask, draw, shift=shift) for logits_fn in logits_fns]
