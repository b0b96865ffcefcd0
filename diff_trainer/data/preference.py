"""Preference pairs for DPO: load {"prompt", "chosen", "rejected"} records, check them, tokenise, collate.

Conversations. Records whose prompt is a list of messages (TRL's conversational preference format: prompt
messages, chosen and rejected assistant messages) are rendered with the chat template (`--chat_template`, else the
tokenizer's) into the same three texts (`chat.preference_texts`): the prompt with the opening of the reply, each
response through its end-of-turn token. A leading BOS the template writes is left to tokenising, which adds it.
A conversation that cannot be rendered is a bad record like the others.

Checking. A record is bad when a key is missing (or not a string), when chosen or rejected is empty (or only
whitespace), or when chosen == rejected. Bad records are reported with their place (`file, line N` for local
JSON-lines files, `record N` for a JSON document, `split row N` for hub or saved data) and, with
--invalid_pairs skip (the default), dropped with a count; with --invalid_pairs error, the first ones are listed
in a DataError. A column missing from the whole data is always an error.

Tokenising. Each side is `prompt + response + EOS` (the prompt gets --prompt_suffix appended, and BOS in front when
the tokenizer has a distinct one); chosen and rejected share the prompt ids. Truncation rule: a prompt longer than
--max_prompt_length keeps its last tokens (BOS stays); responses are never cut, so a pair whose prompt plus longer
response plus EOS exceeds --max_length is counted and skipped. With --response_padding eos (LLaDA SFT) each
response is filled with EOS up to max_length − prompt length, and those EOS are part of the scored response; with
`ignore` rows are padded per batch with unattended, unscored padding (scored: response + one EOS). The default
follows the checkpoint: `eos` only for a model trained on right EOS-padded rows (`row_packing: right` in its
diffusion_config), since EOS padding drowns short answers for any other; a warning says when padding is more than
half of the scored tokens.

Masks. Every pair gets a `mask_seed` column (from the run seed, the split and the row). `PreferenceCollator`
draws the pair's Monte-Carlo masks from a generator seeded with (mask_seed, epoch, stream), so the masks of a
pair do not depend on its batch, its process or gradient accumulation, change from epoch to epoch, and can be
reproduced exactly (precomputed reference scores).
"""

import contextlib
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from datasets import Dataset, DatasetDict

from ..diffusion.forward import mask_exact_count, stratified_mask_counts
from .chat import preference_texts, resolve_template
from .loading import (
    DataError,
    builder_for,
    is_json_lines,
    load_files,
    load_saved,
    numbered_lines,
    open_text,
    parse_record,
    split_off_validation,
)
from .pipeline import bos_prefix, sequence_lengths
from .saving import save_final_dataset

logger = logging.getLogger(__name__)

TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "mask_seed")
REFERENCE_COLUMNS = ("ref_chosen_score", "ref_rejected_score")
INVALID_PAIR_MODES = ("skip", "error")
RESPONSE_PADDINGS = ("eos", "ignore")
REPORTED_LOCATIONS = 5


# ----------------------------------------------------------------------------------------------------
# Loading and checking


def load_preference_splits(data_args) -> tuple[DatasetDict, dict[str, str | None], dict[str, dict]]:
    """Raw train (and validation) splits in source order, each split's source file (None: not a file), and per
    file-sourced split the records whose text the file holds as a non-string (row -> (place, problem))."""
    scanned = {}
    if data_args.load_from_disk:
        raw = load_saved(data_args.dataset_name)
        sources = dict.fromkeys(raw)
    elif data_args.dataset_name:
        import datasets

        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        sources = dict.fromkeys(raw)
    elif data_args.train_file:
        sources = {"train": data_args.train_file}
        if data_args.validation_file:
            sources["validation"] = data_args.validation_file
        conversational = isinstance((first_record(data_args.train_file) or {}).get(data_args.prompt_column), list)
        raw, scanned = load_files(sources, text_columns=() if conversational else data_args.columns)
    else:
        raise DataError("No pairs given: pass --train_file, or --dataset_name (with --load_from_disk for a saved dir).")
    if "train" not in raw:
        raise DataError(f"The data has no 'train' split (found: {', '.join(raw) or 'none'}).")
    kept = {name: raw[name] for name in ("train", "validation") if name in raw}
    return DatasetDict(kept), {name: sources.get(name) for name in kept}, scanned


def first_record(path: str) -> dict | None:
    """The first record of a JSON or JSON-lines file (None for other formats or no object)."""
    if builder_for(path) != "json":
        return None
    if is_json_lines(path):
        for number, line in numbered_lines(path):
            if line.strip():
                return parse_record(line, f"{path}, line {number}")
        return None
    with open_text(path) as handle:
        document = json.load(handle)
    return document[0] if isinstance(document, list) and document and isinstance(document[0], dict) else None


def is_conversational(split: Dataset, prompt_column: str) -> bool:
    """Whether the split holds conversational pairs (its prompts are message lists)."""
    return prompt_column in split.column_names and len(split) > 0 and isinstance(split[0][prompt_column], list)


def render_conversations(
    split: Dataset, names: tuple[str, str, str], tokenizer, template: str, source: str | None, split_name: str
) -> tuple[Dataset, dict[int, tuple[str, str]]]:
    """Conversational pairs as text pairs (`chat.preference_texts`), and row -> (place, problem) for those that
    cannot be rendered (their texts are None, dropped or reported by `drop_bad_pairs`)."""
    texts, problems = {name: [] for name in names}, {}
    bos = tokenizer.bos_token if bos_prefix(tokenizer) else None
    for row, record in enumerate(split):
        try:
            values = preference_texts(tokenizer, template, *(record.get(name) for name in names))
        except DataError as error:
            problems[row] = str(error)
            values = (None, None, None)
        if bos and values[0] is not None and values[0].startswith(bos):
            values = (values[0][len(bos) :], *values[1:])  # tokenising puts the BOS back
        for name, value in zip(names, values):
            texts[name].append(value)
    places = record_locations(sorted(problems), source, split_name)
    return Dataset.from_dict(texts), {
        row: (places.get(row, f"{split_name} split, record {row + 1}"), problem) for row, problem in problems.items()
    }


def pair_problem(prompt, chosen, rejected, names: tuple[str, str, str]) -> str | None:
    """Why a record cannot be a preference pair (None when it can)."""
    for name, value in zip(names, (prompt, chosen, rejected)):
        if value is None:
            return f"missing key {name!r}"
        if not isinstance(value, str):
            return f"{name!r} is a {type(value).__name__}, not a string"
    if not chosen.strip() or not rejected.strip():
        return "empty response"
    if chosen == rejected:
        return "chosen == rejected"
    return None


def find_bad_pairs(split: Dataset, names: tuple[str, str, str]) -> dict[int, str]:
    """Row index -> problem for every bad record of `split` (DataError if a whole column is missing)."""
    missing = [name for name in names if name not in split.column_names]
    if missing:
        raise DataError(
            f"Column(s) {missing} not in the data; available columns: {split.column_names}. "
            "Pass --prompt_column/--chosen_column/--rejected_column."
        )
    columns = [split[name] for name in names]
    problems = {}
    for row, values in enumerate(zip(*columns)):
        problem = pair_problem(*values, names)
        if problem:
            problems[row] = problem
    return problems


def record_locations(rows: list[int], source: str | None, split_name: str) -> dict[int, str]:
    """Human-readable places of dataset rows: `file, line N` for JSON-lines files (blank lines are skipped by
    the loader, so row i is the (i+1)-th non-blank line), `file, record N` otherwise."""
    if source is None:
        return {row: f"{split_name} split, record {row + 1}" for row in rows}
    if not is_json_lines(source):
        return {row: f"{source}, record {row + 1}" for row in rows}
    wanted, found, row = set(rows), {}, -1
    with open_text(source) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                row += 1
                if row in wanted:
                    found[row] = f"{source}, line {number}"
                    if len(found) == len(wanted):
                        break
    return found


def drop_bad_pairs(
    split: Dataset,
    names,
    source: str | None,
    split_name: str,
    mode: str,
    scanned: dict[int, tuple[str, str]] | None = None,
) -> Dataset:
    """Report bad records (place and problem); skip them with a count, or raise DataError (mode 'error').

    `scanned` (from reading the file, row -> (place, problem)) wins over what the loaded values show: a number in
    a text column is loaded as text, so only the scan knows it was not a string.
    """
    scanned = scanned or {}
    problems = {**find_bad_pairs(split, names), **{row: problem for row, (_, problem) in scanned.items()}}
    if not problems:
        return split
    shown = sorted(problems)[: REPORTED_LOCATIONS if mode == "skip" else 2 * REPORTED_LOCATIONS]
    places = {
        **record_locations([row for row in shown if row not in scanned], source, split_name),
        **{row: scanned[row][0] for row in shown if row in scanned},
    }
    listing = "; ".join(f"{places.get(row, f'{split_name} split, record {row + 1}')}: {problems[row]}" for row in shown)
    counts = {}
    for problem in problems.values():
        counts[problem] = counts.get(problem, 0) + 1
    summary = ", ".join(f"{count} {problem}" for problem, count in sorted(counts.items()))
    if mode == "error":
        raise DataError(
            f"{split_name}: {len(problems)} of {len(split)} records are not valid preference pairs "
            f"({summary}). First: {listing}. Fix them or pass --invalid_pairs skip."
        )
    logger.warning(
        "%s: skipped %d of %d records that are not valid preference pairs (%s). First: %s",
        split_name,
        len(problems),
        len(split),
        summary,
        listing,
    )
    keep = np.setdiff1d(np.arange(len(split)), np.fromiter(problems, dtype=np.int64))
    if len(keep) == 0:
        raise DataError(f"{split_name}: no valid preference pair left.")
    return split.select(keep)


def is_tokenised(split: Dataset) -> bool:
    """True for pairs already tokenised by this module (e.g. saved with --save_final_dataset)."""
    return set(TOKEN_COLUMNS) <= set(split.column_names)


def load_preference_data(data_args, seed: int = 42, tokenizer=None) -> tuple[DatasetDict, dict[str, str | None]]:
    """Valid raw pairs: conversations rendered as texts (with `tokenizer`'s or --chat_template's template), bad
    records reported and skipped (or an error), validation held out, limits applied.

    Returns the splits and each split's source file. Tokenised data (from --save_final_dataset) passes unchecked.
    """
    raw, sources, scanned = load_preference_splits(data_args)
    for name in list(raw):
        if is_conversational(raw[name], data_args.prompt_column):
            if tokenizer is None:
                raise DataError(f"{sources[name] or name}: conversational pairs need the tokenizer to render them.")
            template = resolve_template(tokenizer, data_args.chat_template)
            raw[name], scanned[name] = render_conversations(
                raw[name], data_args.columns, tokenizer, template, sources[name], name
            )
        if not is_tokenised(raw[name]):
            raw[name] = drop_bad_pairs(
                raw[name], data_args.columns, sources[name], name, data_args.invalid_pairs, scanned.get(name)
            )
    if "validation" not in raw and data_args.validation_split_percentage > 0:
        train, validation = split_off_validation(raw["train"], data_args.validation_split_percentage, seed)
        raw = DatasetDict({"train": train, "validation": validation})
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for name, limit in limits.items():
        if name in raw and limit is not None:
            raw[name] = raw[name].select(range(min(limit, len(raw[name]))))
    return raw, sources


# ----------------------------------------------------------------------------------------------------
# Tokenising


def pair_mask_seed(seed: int, split: str, row: int) -> int:
    """A well-mixed 63-bit seed for the masks of one pair, from the run seed, the split name and the row."""
    state = np.random.SeedSequence([seed, zlib.crc32(split.encode()), row]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def noise_seed(mask_seed: int, epoch: int, stream: int) -> int:
    """The generator seed of a pair's masks in one epoch; stream 1 gives the reference independent masks."""
    state = np.random.SeedSequence([mask_seed >> 32, mask_seed & 0xFFFFFFFF, epoch, stream]).generate_state(
        2, np.uint32
    )
    return int(state[0]) << 31 | int(state[1]) >> 1


def tokenize_pairs_function(tokenizer, data_args):
    """Batched map: prompt/chosen/rejected text -> `prompt_ids`, `chosen_ids`, `rejected_ids` and a `fits` flag."""
    prompt_column, chosen_column, rejected_column = data_args.columns
    eos = tokenizer.eos_token_id
    bos = bos_prefix(tokenizer)
    max_length, max_prompt = data_args.max_length, data_args.max_prompt_length
    pad_with_eos = data_args.response_padding == "eos"

    def encode(texts):
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    def tokenize(batch):
        prompts = encode([text + data_args.prompt_suffix for text in batch[prompt_column]])
        chosen, rejected = encode(batch[chosen_column]), encode(batch[rejected_column])
        out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "fits": [], "eos_padding": []}
        for prompt, good, bad in zip(prompts, chosen, rejected):
            if max_prompt is not None and len(bos) + len(prompt) > max_prompt:
                prompt = prompt[len(prompt) - (max_prompt - len(bos)) :]  # keep the end of the prompt
            prompt = bos + prompt
            good, bad = good + [eos], bad + [eos]
            room = max_length - len(prompt)
            out["fits"].append(max(len(good), len(bad)) <= room)
            out["eos_padding"].append(max(room - len(good), 0) + max(room - len(bad), 0) if pad_with_eos else 0)
            if pad_with_eos:
                good, bad = good + [eos] * (room - len(good)), bad + [eos] * (room - len(bad))
            out["prompt_ids"].append(prompt)
            out["chosen_ids"].append(good)
            out["rejected_ids"].append(bad)
        return out

    return tokenize


def tokenize_pairs(raw: DatasetDict, tokenizer, data_args, seed: int = 42, main_process_first=None) -> DatasetDict:
    """Token rows of every split: the TOKEN_COLUMNS (+ reference scores if saved); pairs too long are skipped.

    Splits that are already tokenised are kept as they are.
    """
    if tokenizer.eos_token_id is None:
        raise DataError("The tokenizer has no EOS token; responses end with EOS.")
    result = {}
    for name, split in raw.items():
        if is_tokenised(split):
            result[name] = split
            continue
        context = main_process_first or (lambda desc: contextlib.nullcontext())
        with context(desc=f"tokenising {name} pairs"):
            tokenised = split.map(
                tokenize_pairs_function(tokenizer, data_args),
                batched=True,
                num_proc=data_args.preprocessing_num_workers,
                remove_columns=split.column_names,
                desc=f"Tokenising {name} pairs",
            )
        fits = np.asarray(tokenised["fits"], dtype=bool)
        if not fits.all():
            logger.warning(
                "%s: skipped %d of %d pairs longer than max_length %d (prompt%s + response + EOS).",
                name,
                int((~fits).sum()),
                len(fits),
                data_args.max_length,
                f" cut to {data_args.max_prompt_length}" if data_args.max_prompt_length else "",
            )
            tokenised = tokenised.select(np.flatnonzero(fits))
        if len(tokenised) == 0:
            raise DataError(
                f"{name}: no pair fits max_length {data_args.max_length}. Raise --max_length or set "
                "--max_prompt_length."
            )
        warn_about_padding(name, np.asarray(tokenised["eos_padding"]), tokenised, data_args.max_length)
        tokenised = tokenised.remove_columns(["fits", "eos_padding"])
        result[name] = tokenised.add_column(
            "mask_seed", [pair_mask_seed(seed, name, row) for row in range(len(tokenised))]
        )
    return DatasetDict(result)


def warn_about_padding(split_name: str, padding: np.ndarray, tokenised: Dataset, max_length: int) -> None:
    """Warn when EOS padding is more than half of the scored response tokens (it drowns the preference signal)."""
    scored = int(sequence_lengths(tokenised, "chosen_ids").sum() + sequence_lengths(tokenised, "rejected_ids").sum())
    if scored and padding.sum() > scored / 2:
        logger.warning(
            "%s: %.0f%% of the scored response tokens are EOS padding (--response_padding eos up to "
            "--max_length %d), which drowns the preference signal of short answers. Lower --max_length, "
            "or pass --response_padding ignore unless the model was trained with right EOS padding.",
            split_name,
            100 * padding.sum() / scored,
            max_length,
        )


def default_response_padding(diffusion_config: dict | None) -> str:
    """eos for a checkpoint trained on right EOS-padded rows (LLaDA SFT), otherwise ignore (response + one EOS)."""
    return "eos" if (diffusion_config or {}).get("row_packing") == "right" else "ignore"


def with_response_padding(data_args, diffusion_config: dict | None):
    """`data_args` with --response_padding set: as given, or the checkpoint's default (logged)."""
    if data_args.response_padding is not None:
        return data_args
    padding = default_response_padding(diffusion_config)
    logger.info(
        "--response_padding %s: the checkpoint was %s.",
        padding,
        "trained on right EOS-padded rows" if padding == "eos" else "not trained on right EOS-padded rows",
    )
    return replace(data_args, response_padding=padding)


def reference_fingerprint(model_path: str, mc_samples: int, antithetic: bool, seed: int) -> dict:
    """What precomputed reference scores depend on: the reference checkpoint (path, SHA-256 of its config.json and of
    its weight files), the Monte-Carlo budget, antithetic sampling and the run seed (the pairs' mask seeds).

    A hub id that is not a local directory is identified by its name only (hashes None)."""
    local = os.path.isdir(model_path)
    weights = sorted(name for name in os.listdir(model_path) if name.endswith(WEIGHT_SUFFIXES)) if local else []
    return {
        "model": os.path.abspath(model_path) if local else model_path,
        "config_sha256": files_sha256(model_path, ["config.json"]) if local else None,
        "weights_sha256": files_sha256(model_path, weights) if weights else None,
        **run_fingerprint(mc_samples, antithetic, seed),
    }


def run_fingerprint(mc_samples: int, antithetic: bool, seed: int) -> dict:
    """The run settings part of `reference_fingerprint` (what a trainer can check without the reference)."""
    return {"mc_samples": int(mc_samples), "antithetic": bool(antithetic), "seed": int(seed)}


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def files_sha256(directory: str, names: list[str]) -> str:
    """One SHA-256 over the named files of `directory` (name and content of each, in the given order)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(directory, name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def fingerprint_mismatch(stored: dict | None, current: dict) -> str | None:
    """Why stored reference scores do not belong to the `current` reference (None when they do); only the keys of
    `current` are compared."""
    if stored is None:
        return "they carry no reference fingerprint (saved by an older version)"
    changed = [
        f"{key} {stored.get(key)!r} (now {value!r})" for key, value in current.items() if stored.get(key) != value
    ]
    return "they were computed with " + ", ".join(changed) if changed else None


def save_pairs(pairs: DatasetDict, path: str, overwrite: bool = False) -> None:
    """Save the tokenised pairs atomically (reload with --load_from_disk --dataset_name path)."""
    save_final_dataset(pairs, path, overwrite=overwrite)


# ----------------------------------------------------------------------------------------------------
# Collating: the Monte-Carlo noisy copies of every pair


def noise_response(response: torch.Tensor, num_samples: int, mask_token_id: int, generator):
    """`num_samples` noisy copies of one response: counts l_j ~ U{1..L} stratified over the samples, then exactly
    l_j positions masked (LLaDA eq. 14). Returns (noisy [n, L], masked [n, L], counts [n])."""
    length = response.shape[0]
    counts = stratified_mask_counts(length, num_samples, generator=generator).reshape(-1)
    copies = response.unsqueeze(0).expand(num_samples, length)
    noisy, masked = mask_exact_count(
        copies, torch.ones_like(copies, dtype=torch.bool), counts, mask_token_id, generator
    )
    return noisy, masked, counts


@dataclass(frozen=True)
class CountMasks:
    """The masked-diffusion noise of a sequence's VRPO copies: its response masked by `noise_response` (prompt kept).

    Called as noise(prompt [P], response [R], n, generator) -> {"noisy_ids", "masked": [n, P + R],
    "mask_counts": [n]}; an objective's `preference_noise` returns a callable of this form."""

    mask_token_id: int

    def __call__(self, prompt, response, num_samples: int, generator) -> dict:
        noisy, masked, counts = noise_response(response, num_samples, self.mask_token_id, generator)
        prompts = prompt.expand(num_samples, -1)
        return {
            "noisy_ids": torch.cat([prompts, noisy], dim=1),
            "masked": torch.cat([torch.zeros_like(prompts, dtype=torch.bool), masked], dim=1),
            "mask_counts": counts,
        }


def pad_right(rows: list, width: int, value) -> torch.Tensor:
    """Stack 1D tensors (of one dtype, long when there are none) into [len(rows), width], filling with `value`."""
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype if rows else torch.long)
    for index, row in enumerate(rows):
        out[index, : len(row)] = row
    return out


@dataclass
class PreferenceCollator:
    """Batches of pairs for `DiffusionDPOTrainer`, with each pair's `num_samples` noisy copies drawn from its seed.

    Rows are the B chosen sequences then the B rejected ones (`prompt + response`, right-padded with `pad_token_id`
    and attention 0). Keys: `input_ids`, `attention_mask`, `maskable` [2B, T] (clean rows; maskable = response);
    what `noise` draws for each sequence: `noisy_ids`, `masked` [2B·n, T] (row k·n + j is sample j of sequence k;
    per-token values padded with 0) and per-copy values such as `mask_counts` [2B·n] (`CountMasks`, the default);
    `mask_seed` [B]; `ref_scores` [2B] when the pairs carry precomputed reference scores. With `antithetic=False`
    the reference gets its own masks (the same keys prefixed `ref_`, stream 1). `epoch` picks the masks of an
    epoch; `fixed_epoch` (precomputed reference scores, evaluation) overrides it.
    """

    mask_token_id: int
    pad_token_id: int
    num_samples: int = 8
    antithetic: bool = True
    epoch: int = 0
    fixed_epoch: int | None = None
    noise: Callable | None = None  # the objective's `preference_noise()`; None: CountMasks(mask_token_id)

    def __post_init__(self):
        if self.noise is None:
            self.noise = CountMasks(self.mask_token_id)

    def noisy_copies(self, pairs, mask_seeds, stream: int) -> list[dict]:
        """Per sequence (chosen ones, then rejected ones) what `noise` draws for its n noisy copies."""
        epoch = self.epoch if self.fixed_epoch is None else self.fixed_epoch
        generators = [torch.Generator().manual_seed(noise_seed(seed, epoch, stream)) for seed in mask_seeds]
        # each pair's generator serves its chosen response, then its rejected one: masks never depend on the batch
        return [
            self.noise(pair[0], pair[side], self.num_samples, generator)
            for side in (1, 2)
            for generator, pair in zip(generators, pairs)
        ]

    def __call__(self, features) -> dict:
        mask_seeds = [int(feature["mask_seed"]) for feature in features]
        pairs = [
            tuple(torch.as_tensor(f[name], dtype=torch.long) for name in ("prompt_ids", "chosen_ids", "rejected_ids"))
            for f in features
        ]
        prompts = [pair[0] for pair in pairs] * 2
        responses = [pair[1] for pair in pairs] + [pair[2] for pair in pairs]
        width = max(len(p) + len(r) for p, r in zip(prompts, responses))
        no_prompt = [torch.zeros(len(p), dtype=torch.long) for p in prompts]
        batch = {
            "input_ids": pad_right([torch.cat(parts) for parts in zip(prompts, responses)], width, self.pad_token_id),
            "attention_mask": pad_right(
                [torch.ones(len(p) + len(r), dtype=torch.long) for p, r in zip(prompts, responses)], width, 0
            ),
            "maskable": pad_right(
                [torch.cat([z, torch.ones_like(r)]) for z, r in zip(no_prompt, responses)], width, 0
            ).bool(),
        }
        streams = [("", 0)] if self.antithetic else [("", 0), ("ref_", 1)]
        for prefix, stream in streams:
            copies = self.noisy_copies(pairs, mask_seeds, stream)
            for key, first in copies[0].items():
                values = [value for drawn in copies for value in drawn[key]]
                if first.dim() == 1:  # one value per copy
                    batch[f"{prefix}{key}"] = torch.stack(values)
                else:
                    batch[f"{prefix}{key}"] = pad_right(values, width, self.pad_token_id if key == "noisy_ids" else 0)
        batch["mask_seed"] = torch.tensor(mask_seeds, dtype=torch.long)
        if all(name in features[0] for name in REFERENCE_COLUMNS):
            batch["ref_scores"] = torch.tensor(
                [f[REFERENCE_COLUMNS[0]] for f in features] + [f[REFERENCE_COLUMNS[1]] for f in features],
                dtype=torch.float32,
            )
        return batch
