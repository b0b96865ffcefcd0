"""The Preprocessor end to end on in-memory data: tokenise -> <DFF> labels -> filter -> pack/pad -> check."""

import json
import logging

import pytest
from datasets import Dataset, DatasetDict

from conftest import make_byte_tokenizer
from diff_trainer.data.chat import set_chat_template
from diff_trainer.data.labels import IGNORE_INDEX as I
from diff_trainer.data.loading import DataError, load_raw_datasets
from diff_trainer.data.pipeline import LAYOUT_FILE, Preprocessor, RowLayout
from diff_trainer.data.saving import save_final_dataset
from diff_trainer.training.args.data import DataArguments

EOS = 1
DFF = 384  # id of <DFF> in make_byte_tokenizer()


def byte_ids(text):
    """ByT5 ids of plain ASCII text: byte value + 3."""
    return [b + 3 for b in text.encode()]


def dataset(columns, validation=None):
    splits = {"train": Dataset.from_dict(columns)}
    if validation is not None:
        splits["validation"] = Dataset.from_dict(validation)
    return DatasetDict(splits)


def preprocess(raw, tokenizer=None, dff_mode="auto", **data_kwargs):
    """The final rows and the layout the preprocessor reports for them."""
    data_kwargs.setdefault("block_size", 8)
    preprocessor = Preprocessor(tokenizer or make_byte_tokenizer(), DataArguments(dff_labels=dff_mode, **data_kwargs))
    return preprocessor.run(raw)


def test_left_padded_row_shape():
    final, _ = preprocess(dataset({"text": ["ab<DFF>cd"]}))
    row = final["train"][0]
    assert final["train"].column_names == ["input_ids", "labels", "attention_mask"]
    assert row["input_ids"] == [EOS, EOS] + byte_ids("ab") + [DFF] + byte_ids("cd") + [EOS]
    assert row["labels"] == [I, I, I, I, DFF] + byte_ids("cd") + [EOS]
    assert row["attention_mask"] == [0, 0, 1, 1, 1, 1, 1, 1]


def test_right_padded_row_trains_and_attends_eos():
    final, _ = preprocess(dataset({"text": ["a<DFF>b"]}), padding_side="right")
    row = final["train"][0]
    assert row["input_ids"] == byte_ids("a") + [DFF] + byte_ids("b") + [EOS] * 5
    assert row["labels"] == [I, DFF] + byte_ids("b") + [EOS] * 5
    assert row["attention_mask"] == [1] * 8


def test_validation_split_gets_the_same_treatment():
    final, _ = preprocess(dataset({"text": ["a<DFF>b"]}, validation={"text": ["c<DFF>d"]}))
    assert final["validation"][0]["labels"] == [I] * 4 + [I, DFF] + byte_ids("d") + [EOS]


def test_sample_of_block_size_minus_one_fits_with_its_eos():
    text = "abcd<DFF>ef"  # 7 tokens, block_size 8
    final, layout = preprocess(dataset({"text": [text]}))
    assert final["train"][0]["attention_mask"] == [1] * 8
    assert final["train"][0]["input_ids"][-1] == EOS
    assert layout.packing == "left"


def test_sample_of_block_size_is_dropped_with_ignore_long_samples(caplog):
    long, short = "abcde<DFF>ef", "a<DFF>b"  # 8 tokens (too long for block 8) and 3 tokens
    with caplog.at_level(logging.WARNING):
        final, layout = preprocess(dataset({"text": [long, short]}), ignore_long_samples=True)
    assert len(final["train"]) == 1
    assert final["train"][0]["input_ids"][-4:] == byte_ids("a") + [DFF] + byte_ids("b") + [EOS]
    assert layout.packing == "left"
    assert "dropped 1 samples with length >= block_size 8" in caplog.text


def test_sample_of_block_size_forces_packing_with_a_warning(caplog):
    long, short = "abcde<DFF>ef", "a<DFF>b"
    with caplog.at_level(logging.WARNING):
        final, layout = preprocess(dataset({"text": [long, short]}))
    assert layout.packing == "packed"
    assert "--concatenate_texts" in caplog.text and "--ignore_long_samples" in caplog.text
    # 8 + 1 + 3 + 1 = 13 tokens -> one full row, the remainder of 5 is dropped
    assert final["train"]["input_ids"] == [byte_ids("abcde") + [DFF] + byte_ids("ef")]
    assert final["train"]["attention_mask"] == [[1] * 8]


def test_concatenation_drops_remainder_and_rows_without_trained_tokens(caplog):
    # a long context fills the first row entirely: that row has no trained label and is dropped
    texts = ["abcdefghij<DFF>k", "l<DFF>m"]
    with caplog.at_level(logging.WARNING):
        final, _ = preprocess(dataset({"text": texts}), concatenate_texts=True, block_size=5)
    # stream: a..j DFF k EOS l DFF m EOS (16 tokens) -> rows [a-e] [f-j] [DFF k EOS l DFF]; remainder "m EOS" dropped
    assert final["train"]["input_ids"] == [[DFF] + byte_ids("k") + [EOS] + byte_ids("l") + [DFF]]
    assert final["train"]["labels"] == [[DFF] + byte_ids("k") + [EOS, I, DFF]]
    assert "dropped 2 packed rows with no trained token" in caplog.text


def test_dff_auto_without_marker_trains_every_token():
    final, layout = preprocess(dataset({"text": ["abc"]}))
    assert layout.marker is None
    assert final["train"][0]["labels"] == [I] * 4 + byte_ids("abc") + [EOS]


def test_dff_auto_with_a_marker_drops_samples_without_it(caplog):
    with caplog.at_level(logging.WARNING):
        final, layout = preprocess(dataset({"text": ["abc", "a<DFF>b"]}))
    assert layout.marker == "<DFF>"
    assert len(final["train"]) == 1
    assert final["train"][0]["labels"][-3:] == [DFF] + byte_ids("b") + [EOS]
    assert "dropped 1 of 2 samples without <DFF>" in caplog.text and "'abc'" in caplog.text


def test_dff_off_trains_the_context_too():
    final, layout = preprocess(dataset({"text": ["a<DFF>b"]}), dff_mode="off")
    assert layout.marker is None
    assert final["train"][0]["labels"] == [I] * 4 + byte_ids("a") + [DFF] + byte_ids("b") + [EOS]


def test_a_validation_split_too_short_for_one_packed_row_names_the_split_and_the_flags():
    # 4 validation tokens cannot fill one packed row of 8; the train split packs into one row
    raw = dataset({"text": ["abcde<DFF>ef"]}, validation={"text": ["a<DFF>b"]})
    with pytest.raises(DataError) as error:
        preprocess(raw, concatenate_texts=True)
    assert str(error.value) == (
        "The validation split has no complete row of 8 tokens. Use a smaller --block_size "
        "or more validation data (a larger --validation_split_percentage, now 5)."
    )


def test_a_small_validation_percentage_that_packs_into_no_row_is_a_clear_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"{i}+1=<DFF>{i + 1}"}) + "\n" for i in range(40)))
    data_args = DataArguments(
        train_file=str(path), validation_split_percentage=3, concatenate_texts=True, block_size=32
    )
    raw = load_raw_datasets(data_args)
    assert len(raw["validation"]) == 2  # 2 records of at most 9 tokens each (with EOS): no row of 32
    with pytest.raises(
        DataError,
        match="The validation split has no complete row of 32 tokens.*"
        r"larger --validation_split_percentage, now 3",
    ):
        Preprocessor(make_byte_tokenizer(), data_args).run(raw)


def test_a_validation_file_too_short_for_one_row_asks_for_a_longer_file(tmp_path):
    train, validation = tmp_path / "train.txt", tmp_path / "validation.txt"
    train.write_text("ab<DFF>cdefghijklmnop\n")
    validation.write_text("a<DFF>b\n")
    data_args = DataArguments(
        train_file=str(train), validation_file=str(validation), concatenate_texts=True, block_size=8
    )
    with pytest.raises(DataError, match=f"more validation data \\(a longer --validation_file {validation}\\)"):
        Preprocessor(make_byte_tokenizer(), data_args).run(load_raw_datasets(data_args))


def test_dff_on_without_any_marker_is_an_empty_dataset_error():
    with pytest.raises(DataError, match="train split is empty after filtering"):
        preprocess(dataset({"text": ["abc", "def"]}), dff_mode="on")


def test_every_sample_too_long_is_an_empty_dataset_error():
    with pytest.raises(DataError, match="empty after filtering"):
        preprocess(dataset({"text": ["abcdefgh<DFF>i"]}), ignore_long_samples=True)


def test_multi_token_marker_without_dff_special_token():
    tokenizer = make_byte_tokenizer(dff=False)
    final, layout = preprocess(dataset({"text": ["ab<DFF>c"]}), tokenizer=tokenizer, block_size=12)
    assert layout.marker == "<DFF>"
    marker = byte_ids("<DFF>")
    assert final["train"][0]["labels"] == [I] * 5 + marker + byte_ids("c") + [EOS]


def test_existing_labels_are_kept_unless_forced():
    ids = byte_ids("a") + [DFF] + byte_ids("b")
    columns = {"input_ids": [ids], "labels": [[I, I, 5]]}
    kept, _ = preprocess(dataset(columns))
    assert kept["train"][0]["labels"] == [I] * 4 + [I, I, 5, EOS]
    forced, _ = preprocess(dataset(columns), force_label=True)
    assert forced["train"][0]["labels"] == [I] * 4 + [I, DFF] + byte_ids("b") + [EOS]


def test_input_ids_column_skips_tokenisation():
    # no text column at all: the ids are used as they are
    final, _ = preprocess(dataset({"input_ids": [[40, DFF, 41]], "source": ["x"]}))
    assert final["train"][0]["input_ids"] == [EOS] * 4 + [40, DFF, 41, EOS]
    assert final["train"][0]["labels"] == [I] * 5 + [DFF, 41, EOS]


def test_prompt_and_response_columns_are_joined_with_dff():
    raw = dataset({"question": ["ab"], "answer": ["c"]})
    final, _ = preprocess(raw, prompt_column="question", response_column="answer")
    assert final["train"][0]["input_ids"][-5:] == byte_ids("ab") + [DFF] + byte_ids("c") + [EOS]
    assert final["train"][0]["labels"][-3:] == [DFF] + byte_ids("c") + [EOS]


def test_unknown_text_column_lists_the_available_columns():
    with pytest.raises(DataError, match=r"'body' not in the data; available columns: \['content', 'id'\]"):
        preprocess(dataset({"content": ["a<DFF>b"], "id": [1]}), text_column="body")


def test_unknown_prompt_column_is_named():
    with pytest.raises(DataError, match=r"\['prompt'\] not in the data"):
        preprocess(dataset({"question": ["a"], "answer": ["b"]}), prompt_column="prompt", response_column="answer")


def test_skip_concat_rejects_rows_of_the_wrong_length():
    rows = dataset({"input_ids": [[5, 6, 7]], "labels": [[5, 6, 7]], "attention_mask": [[1, 1, 1]]})
    with pytest.raises(DataError, match="saved rows have block_size 3, not --block_size 8"):
        preprocess(rows, skip_concat=True)
    uneven = dataset(
        {"input_ids": [[5, 6, 7], [5, 6]], "labels": [[5, 6, 7], [5, 6]], "attention_mask": [[1, 1, 1], [1, 1]]}
    )
    with pytest.raises(DataError, match="row 1 has 2 input_ids, expected block_size 3"):
        preprocess(uneven, skip_concat=True, block_size=None)


def test_skip_concat_rejects_rows_without_trained_labels():
    rows = dataset({"input_ids": [[5] * 8], "labels": [[I] * 8], "attention_mask": [[1] * 8]})
    with pytest.raises(DataError, match="no trained label"):
        preprocess(rows, skip_concat=True)


def test_tokenizer_without_eos_is_refused():
    tokenizer = make_byte_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(DataError, match="no EOS token"):
        preprocess(dataset({"text": ["a<DFF>b"]}), tokenizer=tokenizer)


def saved_rows(tmp_path, **data_kwargs):
    """Rows preprocessed with the byte tokenizer and saved with their layout, as --save_final_dataset does."""
    final, layout = preprocess(dataset({"text": ["a<DFF>b", "cd<DFF>e"]}), **data_kwargs)
    path = str(tmp_path / "rows")
    save_final_dataset(final, path, extra_files={LAYOUT_FILE: layout.to_json()})
    return path, layout


def reload(path, tokenizer=None, **data_kwargs):
    args = DataArguments(dataset_name=path, load_from_disk=True, skip_concat=True, **data_kwargs)
    return Preprocessor(tokenizer or make_byte_tokenizer(), args).run(load_raw_datasets(args))


def test_saved_rows_keep_their_layout_and_block_size(tmp_path):
    path, layout = saved_rows(tmp_path, padding_side="right", validation_split_percentage=0)
    assert (layout.packing, layout.block_size, layout.marker, layout.vocab_size) == ("right", 8, "<DFF>", 386)
    rows, reloaded = reload(path, validation_split_percentage=0)  # no --block_size: taken from the rows
    assert reloaded == layout
    assert rows["train"][0]["attention_mask"] == [1] * 8  # right padding is attended, yet not packed
    assert RowLayout.read(path) == layout


def test_saved_rows_refuse_another_block_size_or_tokenizer(tmp_path):
    path, _ = saved_rows(tmp_path, validation_split_percentage=0)
    with pytest.raises(DataError, match="saved rows have block_size 8, not --block_size 16"):
        reload(path, block_size=16, validation_split_percentage=0)
    with pytest.raises(DataError, match=r"tokenised with ByT5Tokenizer \(386 tokens\).*\(385 tokens\)"):
        reload(path, tokenizer=make_byte_tokenizer(mask=False), validation_split_percentage=0)
    other_marker = make_byte_tokenizer(dff=False)
    other_marker.add_special_tokens({"additional_special_tokens": ["<SEP>", "<DFF>"]})  # <DFF> gets another id
    with pytest.raises(DataError, match="not with the tokenizer of this run"):
        reload(path, tokenizer=other_marker, validation_split_percentage=0)


def test_tokens_added_after_saving_keep_the_rows_valid(tmp_path):
    path, layout = saved_rows(tmp_path, validation_split_percentage=0)
    grown = make_byte_tokenizer()
    grown.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert reload(path, tokenizer=grown, validation_split_percentage=0)[1].vocab_size == layout.vocab_size


def test_rows_saved_without_a_layout_are_read_off_the_rows(tmp_path, caplog):
    final, _ = preprocess(dataset({"text": ["a<DFF>b"]}), validation_split_percentage=0)
    path = str(tmp_path / "old")
    final.save_to_disk(path)
    with caplog.at_level(logging.WARNING):
        _, layout = reload(path, validation_split_percentage=0)
    assert (layout.packing, layout.block_size) == ("left", 8)
    assert "no row_layout.json" in caplog.text


def test_worker_processes_give_the_same_rows_and_a_rerun_reads_the_cache(tmp_path):
    from diff_trainer.data.loading import load_files

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"{i}+{i}=<DFF>{2 * i}"}) + "\n" for i in range(60)))
    cache = tmp_path / "cache"
    single, _ = preprocess(load_files({"train": str(path)}, str(cache))[0], block_size=16)
    parallel, _ = preprocess(
        load_files({"train": str(path)}, str(cache))[0], block_size=16, preprocessing_num_workers=2
    )
    assert parallel["train"].to_list() == single["train"].to_list() and len(single["train"]) == 60
    written = sorted(cache.rglob("cache-*.arrow"))
    again, _ = preprocess(load_files({"train": str(path)}, str(cache))[0], block_size=16, preprocessing_num_workers=2)
    assert again["train"].to_list() == parallel["train"].to_list()
    assert sorted(cache.rglob("cache-*.arrow")) == written  # every map step was read back from the cache
    assert again["train"].cache_files[0]["filename"] in map(str, written)


# ----------------------------------------------------------------------------------------------------
# Conversations (data/chat.py) through the pipeline


def chat_tokenizer():
    """The byte tokenizer with the chatml template and its two special tokens (ids 386, 387)."""
    tokenizer = make_byte_tokenizer()
    assert set_chat_template(tokenizer, "chatml") == [386, 387]
    return tokenizer


def conversation(question, answer):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


START, END, NEWLINE = 386, 387, byte_ids("\n")


def test_conversations_are_rendered_and_trained_on_the_assistant_turn_padded_or_packed():
    user = [START] + byte_ids("user\nQ?") + [END] + NEWLINE + [START] + byte_ids("assistant\n")
    answer = byte_ids("A.") + [END]
    raw = dataset({"messages": [conversation("Q?", "A.")]})
    final, layout = preprocess(raw, chat_tokenizer(), block_size=32, validation_split_percentage=0)
    assert (layout.packing, layout.marker, layout.chat_template) == ("left", None, "tokenizer")
    padding = 32 - len(user) - len(answer) - 1
    assert final["train"][0]["input_ids"] == [EOS] * padding + user + answer + [EOS]
    assert final["train"][0]["labels"] == [I] * (padding + len(user)) + answer + [EOS]
    packed, layout = preprocess(
        dataset({"messages": [conversation("Q?", "A.")] * 3}),
        chat_tokenizer(),
        block_size=30,
        concatenate_texts=True,
        validation_split_percentage=0,
    )
    stream = [k for k in range(3) for _ in range(len(user) + len(answer) + 1)]  # 3 x 25 tokens: two rows of 30
    assert layout.packing == "packed"
    assert [row["document_ids"] for row in packed["train"]] == [stream[:30], stream[30:60]]


def test_prompt_completion_records_and_the_three_multi_turn_modes():
    tokenizer = chat_tokenizer()
    two_turns = conversation("Q?", "A.") + conversation("R?", "B.")
    trained = {}
    for mode in ("all", "expand", "last"):
        final, _ = preprocess(
            dataset({"messages": [two_turns]}), tokenizer, block_size=64, multi_turn=mode, validation_split_percentage=0
        )
        trained[mode] = [
            tokenizer.decode([label for label in row["labels"] if label not in (I, EOS)]) for row in final["train"]
        ]
    assert trained == {
        "all": ["A.<|im_end|>B.<|im_end|>"],
        "expand": ["A.<|im_end|>", "B.<|im_end|>"],
        "last": ["B.<|im_end|>"],
    }
    record = {"prompt": two_turns[:3], "completion": two_turns[3:]}
    final, _ = preprocess(
        dataset({key: [value] for key, value in record.items()}),
        tokenizer,
        block_size=64,
        validation_split_percentage=0,
    )
    assert tokenizer.decode([label for label in final["train"][0]["labels"] if label not in (I, EOS)]) == "B.<|im_end|>"


def test_bad_conversations_name_the_record_or_are_counted_and_skipped(tmp_path, caplog):
    path = tmp_path / "chat.jsonl"
    records = [{"messages": conversation("Q?", "A.")}, {"messages": [{"role": "user", "content": "Q?"}]}]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    args = dict(train_file=str(path), validation_split_percentage=0, block_size=32)
    raw = load_raw_datasets(DataArguments(**args))
    with pytest.raises(DataError, match=rf"{path}, record 2: no assistant turn to train"):
        preprocess(raw, chat_tokenizer(), **args)
    with caplog.at_level(logging.WARNING):
        final, _ = preprocess(raw, chat_tokenizer(), invalid_records="skip", **args)
    assert len(final["train"]) == 1 and "skipped 1 of 2 conversations" in caplog.text
    with pytest.raises(DataError, match="has no chat template; pass --chat_template"):
        preprocess(raw, make_byte_tokenizer(), **args)
    for name, flag in (("--dff_labels", {"dff_mode": "on"}), ("--force_label", {"force_label": True})):
        with pytest.raises(DataError, match=f"{name} apply to text records"):  # they would change nothing here
            preprocess(raw, chat_tokenizer(), **args, **flag)


def test_saved_conversation_rows_keep_their_template_and_documents(tmp_path):
    tokenizer = chat_tokenizer()
    final, layout = preprocess(
        dataset({"messages": [conversation("Q?", "A.")] * 3}),
        tokenizer,
        block_size=16,
        concatenate_texts=True,
        chat_template="chatml",
        validation_split_percentage=0,
    )
    path = str(tmp_path / "rows")
    save_final_dataset(final, path, extra_files={LAYOUT_FILE: layout.to_json()})
    rows, reloaded = reload(path, tokenizer=tokenizer, validation_split_percentage=0)
    assert reloaded == layout and reloaded.chat_template == "chatml"
    assert rows["train"]["document_ids"] == final["train"]["document_ids"]
    with pytest.raises(DataError, match="rendered with chat template chatml, not --chat_template qwen2"):
        reload(path, tokenizer=tokenizer, chat_template="qwen2", validation_split_percentage=0)
