"""Preference pairs: bad-record reports with file and line, tokenising and truncation, seeded collation."""

import hashlib
import json
import logging

import pytest
import torch
from datasets import Dataset, DatasetDict

from conftest import make_byte_tokenizer
from diff_trainer.data.io import write_jsonl
from diff_trainer.data.loading import DataError
from diff_trainer.data.preference import (
    PreferenceCollator,
    is_tokenised,
    load_preference_data,
    noise_seed,
    pair_mask_seed,
    save_pairs,
    tokenize_pairs,
)
from diff_trainer.training.args.data import PreferenceDataArguments

GOOD = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.fixture
def tokenizer():
    return make_byte_tokenizer()


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_bad_records_are_skipped_with_count_and_file_line(tmp_path, caplog):
    path = write_lines(
        tmp_path / "pairs.jsonl",
        [
            json.dumps(GOOD),
            "",  # blank lines are not records, but they count for line numbers
            json.dumps({"prompt": "2+2=", "chosen": "4"}),
            json.dumps({"prompt": "3+3=", "chosen": " ", "rejected": "5"}),
            json.dumps({"prompt": "4+4=", "chosen": "8", "rejected": "8"}),
            json.dumps({"prompt": "5+5=", "chosen": "10", "rejected": "11"}),
        ],
    )
    with caplog.at_level(logging.WARNING):
        raw, sources = load_preference_data(PreferenceDataArguments(train_file=path))
    assert raw["train"]["prompt"] == ["1+1=", "5+5="]
    assert sources == {"train": path}
    message = caplog.text
    assert "skipped 3 of 5" in message
    assert f"{path}, line 3: missing key 'rejected'" in message
    assert f"{path}, line 4: empty response" in message
    assert f"{path}, line 5: chosen == rejected" in message


def test_bad_records_raise_in_error_mode(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(GOOD), json.dumps({**GOOD, "chosen": 7})])
    with pytest.raises(DataError, match=r"pairs.jsonl, line 2: 'chosen' is a int, not a string.*--invalid_pairs skip"):
        load_preference_data(PreferenceDataArguments(train_file=path, invalid_pairs="error"))


def test_a_missing_column_is_always_an_error(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps({"prompt": "a", "chosen": "b", "loser": "c"})])
    with pytest.raises(DataError, match=r"\['rejected'\] not in the data.*--rejected_column"):
        load_preference_data(PreferenceDataArguments(train_file=path))
    raw, _ = load_preference_data(PreferenceDataArguments(train_file=path, rejected_column="loser"))
    assert raw["train"]["loser"] == ["c"]


def test_zstd_json_document_and_saved_data_report_their_own_places(tmp_path, caplog):
    zst = str(tmp_path / "pairs.jsonl.zst")
    write_jsonl([GOOD, {**GOOD, "rejected": "2"}], zst)
    document = tmp_path / "pairs.json"
    document.write_text(json.dumps([GOOD, {**GOOD, "rejected": ""}]))
    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list([GOOD, GOOD, {**GOOD, "chosen": "3"}])}).save_to_disk(str(saved))
    with caplog.at_level(logging.WARNING):
        from_zst, _ = load_preference_data(PreferenceDataArguments(train_file=zst))
        from_document, _ = load_preference_data(PreferenceDataArguments(train_file=str(document)))
        from_disk, _ = load_preference_data(PreferenceDataArguments(dataset_name=str(saved), load_from_disk=True))
    assert len(from_zst["train"]) == len(from_document["train"]) == 1 and len(from_disk["train"]) == 2
    assert f"{zst}, line 2: chosen == rejected" in caplog.text
    assert f"{document}, record 2: empty response" in caplog.text
    assert "train split, record 3: chosen == rejected" in caplog.text


def test_validation_is_held_out_after_cleaning_and_limits_apply(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps({**GOOD, "prompt": f"{i}="}) for i in range(20)])
    args = PreferenceDataArguments(train_file=path, validation_split_percentage=25, max_train_samples=10)
    raw, _ = load_preference_data(args)
    assert (len(raw["train"]), len(raw["validation"])) == (10, 5)
    assert not set(raw["train"]["prompt"]) & set(raw["validation"]["prompt"])


def test_tokens_are_prompt_response_eos_with_a_shared_prompt(tokenizer):
    raw = DatasetDict({"train": Dataset.from_list([{"prompt": "12+7=", "chosen": "19", "rejected": "118"}])})
    args = PreferenceDataArguments(train_file="unused", max_length=16, response_padding="ignore", prompt_suffix="<DFF>")
    row = tokenize_pairs(raw, tokenizer, args, seed=3)["train"][0]
    eos = tokenizer.eos_token_id
    assert row["prompt_ids"] == ids(tokenizer, "12+7=") + [tokenizer.convert_tokens_to_ids("<DFF>")]
    assert row["chosen_ids"] == ids(tokenizer, "19") + [eos]
    assert row["rejected_ids"] == ids(tokenizer, "118") + [eos]
    assert row["mask_seed"] == pair_mask_seed(3, "train", 0)


def test_eos_padding_fills_each_response_to_max_length(tokenizer):
    raw = DatasetDict({"train": Dataset.from_list([{"prompt": "ab", "chosen": "c", "rejected": "def"}])})
    row = tokenize_pairs(
        raw, tokenizer, PreferenceDataArguments(train_file="unused", max_length=8, response_padding="eos")
    )["train"][0]
    eos = tokenizer.eos_token_id
    assert row["chosen_ids"] == ids(tokenizer, "c") + [eos] * 5  # max_length 8 - prompt 2 = 6 response tokens
    assert row["rejected_ids"] == ids(tokenizer, "def") + [eos] * 3


def test_long_prompts_keep_their_end_and_pairs_that_cannot_fit_are_skipped(tokenizer, caplog):
    tokenizer.bos_token = "<DFF>"  # a distinct BOS, kept in front when the prompt is cut
    records = [
        {"prompt": "abcdefgh", "chosen": "xy", "rejected": "z"},
        {"prompt": "p", "chosen": "x" * 9, "rejected": "z"},
    ]
    raw = DatasetDict({"train": Dataset.from_list(records)})
    args = PreferenceDataArguments(train_file="unused", max_length=10, max_prompt_length=4, response_padding="ignore")
    with caplog.at_level(logging.WARNING):
        rows = tokenize_pairs(raw, tokenizer, args)["train"]
    assert len(rows) == 1 and "skipped 1 of 2 pairs longer than max_length 10" in caplog.text
    assert rows[0]["prompt_ids"] == [tokenizer.bos_token_id] + ids(tokenizer, "fgh")


def test_no_pair_fitting_is_an_error(tokenizer):
    raw = DatasetDict({"train": Dataset.from_list([{"prompt": "abc", "chosen": "xyz", "rejected": "z"}])})
    with pytest.raises(DataError, match="no pair fits max_length 5"):
        tokenize_pairs(raw, tokenizer, PreferenceDataArguments(train_file="unused", max_length=5))


def test_argument_checks():
    with pytest.raises(ValueError, match="--invalid_pairs"):
        PreferenceDataArguments(invalid_pairs="drop")
    with pytest.raises(ValueError, match="--response_padding"):
        PreferenceDataArguments(response_padding="left")
    with pytest.raises(ValueError, match="--max_prompt_length"):
        PreferenceDataArguments(max_length=8, max_prompt_length=8)


def test_mask_seeds_differ_by_row_split_and_run_seed_and_noise_seeds_by_epoch_and_stream():
    seeds = {pair_mask_seed(s, split, row) for s in (0, 1) for split in ("train", "validation") for row in range(50)}
    assert len(seeds) == 200 and all(0 <= seed < 2**63 for seed in seeds)
    base = pair_mask_seed(0, "train", 0)
    assert len({noise_seed(base, epoch, stream) for epoch in range(3) for stream in (0, 1)}) == 6


def make_features(tokenizer, count=3):
    records = [{"prompt": f"{i}*{i}=", "chosen": str(i * i), "rejected": str(i * i + 10**i)} for i in range(count)]
    args = PreferenceDataArguments(train_file="unused", max_length=20, response_padding="ignore")
    return list(tokenize_pairs(DatasetDict({"train": Dataset.from_list(records)}), tokenizer, args)["train"])


def make_collator(tokenizer, **kwargs):
    return PreferenceCollator(tokenizer.mask_token_id, tokenizer.pad_token_id, num_samples=kwargs.pop("n", 4), **kwargs)


def test_collated_rows_mask_exactly_the_counted_response_tokens(tokenizer):
    features = make_features(tokenizer)
    n = 4
    batch = make_collator(tokenizer, n=n)(features)
    sequences = 2 * len(features)
    assert batch["input_ids"].shape[0] == sequences and batch["noisy_ids"].shape[0] == sequences * n
    maskable = batch["maskable"].repeat_interleave(n, 0)
    masked = batch["masked"]
    assert not (masked & ~maskable).any()  # prompts and padding are never masked
    assert torch.equal(masked.sum(1), batch["mask_counts"])
    clean = batch["input_ids"].repeat_interleave(n, 0)
    assert torch.equal(batch["noisy_ids"], torch.where(masked, tokenizer.mask_token_id, clean))
    lengths = batch["maskable"].sum(1)
    counts = batch["mask_counts"].reshape(sequences, n)
    assert ((counts >= 1) & (counts <= lengths.unsqueeze(1))).all()
    # chosen rows first, then rejected rows, each prompt + response + EOS, attention 0 on padding
    first_chosen = features[0]["prompt_ids"] + features[0]["chosen_ids"]
    assert batch["input_ids"][0, : len(first_chosen)].tolist() == first_chosen
    assert batch["attention_mask"][0].sum() == len(first_chosen)
    first_rejected = features[0]["prompt_ids"] + features[0]["rejected_ids"]
    assert batch["input_ids"][len(features), : len(first_rejected)].tolist() == first_rejected


def test_counts_are_stratified_over_the_samples(tokenizer):
    feature = {
        "prompt_ids": [5],
        "chosen_ids": list(range(10, 18)),
        "rejected_ids": list(range(20, 28)),
        "mask_seed": 11,
    }
    batch = make_collator(tokenizer, n=8)([feature])
    for counts in batch["mask_counts"].reshape(2, 8):
        assert sorted(counts.tolist()) == list(range(1, 9))  # n = L: every count 1..L exactly once


def response_masks(batch, index, n):
    """Sample masks of sequence `index`, restricted to its response (layout-independent)."""
    rows = batch["masked"][index * n : (index + 1) * n]
    return rows[:, batch["maskable"][index]]


def test_masks_come_from_each_pairs_seed_not_from_its_batch(tokenizer):
    features = make_features(tokenizer, 4)
    collator = make_collator(tokenizer)
    together = collator(features)
    alone = collator([features[2]])
    n = collator.num_samples
    assert torch.equal(response_masks(together, 2, n), response_masks(alone, 0, n))  # chosen
    assert torch.equal(response_masks(together, 4 + 2, n), response_masks(alone, 1, n))  # rejected
    assert torch.equal(together["mask_seed"], torch.tensor([f["mask_seed"] for f in features]))


def test_epochs_change_masks_unless_the_epoch_is_fixed(tokenizer):
    features = [
        {"prompt_ids": [5], "chosen_ids": list(range(10, 26)), "rejected_ids": list(range(30, 46)), "mask_seed": 3}
    ]
    collator = make_collator(tokenizer)
    first = collator(features)["masked"]
    collator.epoch = 1
    assert not torch.equal(collator(features)["masked"], first)
    fixed = make_collator(tokenizer, fixed_epoch=0, epoch=5)
    assert torch.equal(fixed(features)["masked"], first)


def test_without_antithetic_sampling_the_reference_gets_its_own_masks(tokenizer):
    features = make_features(tokenizer)
    shared = make_collator(tokenizer)(features)
    separate = make_collator(tokenizer, antithetic=False)(features)
    assert "ref_masked" not in shared
    assert torch.equal(separate["masked"], shared["masked"])  # the policy's masks are the same either way
    assert not torch.equal(separate["ref_masked"], separate["masked"])
    assert torch.equal(separate["ref_masked"].sum(1), separate["ref_mask_counts"])


def test_precomputed_reference_scores_are_passed_on(tokenizer):
    features = [
        {**f, "ref_chosen_score": -1.0 - i, "ref_rejected_score": -5.0 - i}
        for i, f in enumerate(make_features(tokenizer, 2))
    ]
    batch = make_collator(tokenizer)(features)
    assert batch["ref_scores"].tolist() == [-1.0, -2.0, -5.0, -6.0]


def test_tokenised_pairs_round_trip_through_save_and_load(tmp_path, tokenizer):
    raw = DatasetDict({"train": Dataset.from_list([GOOD, {**GOOD, "prompt": "2+0="}])})
    pairs = tokenize_pairs(raw, tokenizer, PreferenceDataArguments(train_file="unused", max_length=12))
    save_pairs(pairs, str(tmp_path / "final"))
    with pytest.raises(DataError, match="--overwrite_final_dataset"):
        save_pairs(pairs, str(tmp_path / "final"))
    loaded, _ = load_preference_data(PreferenceDataArguments(dataset_name=str(tmp_path / "final"), load_from_disk=True))
    assert is_tokenised(loaded["train"])
    again = tokenize_pairs(loaded, tokenizer, PreferenceDataArguments(train_file="unused", max_length=12))
    assert again["train"].to_list() == pairs["train"].to_list()


def test_reference_fingerprint_hashes_config_and_weights_and_names_what_changed(tmp_path):
    from diff_trainer.data.preference import fingerprint_mismatch, reference_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 32}')
    (model / "model.safetensors").write_bytes(b"weights")
    before = reference_fingerprint(str(model), 8, True, 42)
    assert before == {
        "model": str(model),
        "config_sha256": hashlib.sha256(b"config.json\0" + b'{"hidden_size": 32}').hexdigest(),
        "weights_sha256": hashlib.sha256(b"model.safetensors\0weights").hexdigest(),
        "mc_samples": 8,
        "antithetic": True,
        "seed": 42,
    }
    assert fingerprint_mismatch(before, reference_fingerprint(str(model), 8, True, 42)) is None
    (model / "model.safetensors").write_bytes(b"trained")
    after = reference_fingerprint(str(model), 4, True, 42)
    assert fingerprint_mismatch(before, after) == (
        f"they were computed with weights_sha256 {before['weights_sha256']!r} (now {after['weights_sha256']!r}), "
        "mc_samples 8 (now 4)"
    )
    assert "older version" in fingerprint_mismatch(None, after)
    assert reference_fingerprint("org/hub-model", 8, False, 1)["weights_sha256"] is None


def test_response_padding_follows_the_checkpoint_and_a_warning_says_when_padding_dominates(tokenizer, caplog):
    from diff_trainer.data.preference import default_response_padding, with_response_padding

    assert default_response_padding({"row_packing": "right"}) == "eos"
    assert [default_response_padding(c) for c in ({"row_packing": "packed"}, {"row_packing": "left"}, {}, None)] == [
        "ignore"
    ] * 4
    given = PreferenceDataArguments(train_file="unused", response_padding="eos")
    assert with_response_padding(given, {}) is given
    assert with_response_padding(PreferenceDataArguments(train_file="unused"), {}).response_padding == "ignore"
    raw = DatasetDict({"train": Dataset.from_list([{"prompt": "ab", "chosen": "c", "rejected": "def"}])})
    for max_length, warned in ((8, False), (9, True)):
        caplog.clear()
        args = PreferenceDataArguments(train_file="unused", max_length=max_length, response_padding="eos")
        with caplog.at_level(logging.WARNING):
            tokenize_pairs(raw, tokenizer, args)
        # room 6: padding 4 + 2 of 12 scored tokens (exactly half, no warning); room 7: 5 + 3 of 14 (57%)
        assert ("57% of the scored response tokens are EOS padding" in caplog.text) == warned


def test_conversational_pairs_score_what_chat_fine_tuning_trains(tmp_path, caplog):
    """TRL's conversational preference records: the prompt and responses are the ids a chat SFT example of the same
    conversation has as context and as trained labels (plus the EOS every response ends with)."""
    from diff_trainer.data.chat import chat_examples, set_chat_template

    tokenizer = make_byte_tokenizer()
    set_chat_template(tokenizer, "chatml")
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    chosen, rejected = [{"role": "assistant", "content": "2"}], [{"role": "assistant", "content": "3"}]
    path = write_lines(
        tmp_path / "pairs.jsonl",
        [
            json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}),
            json.dumps({"prompt": prompt, "chosen": [{"role": "user", "content": "2"}], "rejected": rejected}),
        ],
    )
    args = PreferenceDataArguments(train_file=path, max_length=128)
    with caplog.at_level(logging.WARNING):
        raw, _ = load_preference_data(args, tokenizer=tokenizer)
    assert f"{path}, line 2: 'chosen': no assistant turn to train" in caplog.text
    (pair,) = tokenize_pairs(raw, tokenizer, args)["train"]
    for response, response_ids in ((chosen, pair["chosen_ids"]), (rejected, pair["rejected_ids"])):
        columns, _ = chat_examples([{"prompt": prompt, "completion": response}], tokenizer, tokenizer.chat_template)
        (sft_ids,), (labels,) = columns["input_ids"], columns["labels"]
        context = labels.count(-100)
        assert pair["prompt_ids"] == sft_ids[:context] and response_ids == labels[context:] + [tokenizer.eos_token_id]
    assert tokenizer.decode(pair["prompt_ids"]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(DataError, match="line 2: 'chosen': no assistant turn"):
        load_preference_data(PreferenceDataArguments(train_file=path, invalid_pairs="error"), tokenizer=tokenizer)
