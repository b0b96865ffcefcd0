"""Loading raw text from local files and save_to_disk directories, and the errors for bad input."""

import gzip
import json

import pandas as pd
import pytest
import zstandard
from datasets import Dataset, DatasetDict

from diff_trainer.data.loading import DataError, load_raw_datasets
from diff_trainer.training.args.data import DataArguments

RECORDS = [{"text": f"context {i}<DFF>diff {i}", "id": i} for i in range(20)]


def jsonl_bytes(records):
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def load(tmp_path, **data_kwargs):
    data_kwargs.setdefault("validation_split_percentage", 0)
    return load_raw_datasets(DataArguments(**data_kwargs), cache_dir=str(tmp_path / "cache"))


def texts(split):
    return split["text"]


def test_jsonl_zst(tmp_path):
    path = tmp_path / "train.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(RECORDS)))
    raw = load(tmp_path, train_file=str(path))
    assert texts(raw["train"]) == [r["text"] for r in RECORDS]
    assert raw["train"]["id"] == list(range(20))


def test_json_gz(tmp_path):
    path = tmp_path / "train.json.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(jsonl_bytes(RECORDS))
    assert texts(load(tmp_path, train_file=str(path))["train"]) == [r["text"] for r in RECORDS]


def test_txt_keeps_one_row_per_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("a<DFF>b\nc<DFF>d\n")
    rows = texts(load(tmp_path, train_file=str(path))["train"])
    assert [row.rstrip("\n") for row in rows] == ["a<DFF>b", "c<DFF>d"]


def test_csv_and_parquet(tmp_path):
    frame = pd.DataFrame(RECORDS)
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_parquet(tmp_path / "train.parquet")
    for name in ("train.csv", "train.parquet"):
        raw = load(tmp_path, train_file=str(tmp_path / name))
        assert texts(raw["train"]) == list(frame["text"]), name


def test_validation_file_and_sample_limits(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(jsonl_bytes(RECORDS))
    (tmp_path / "valid.jsonl").write_bytes(jsonl_bytes(RECORDS[:3]))
    raw = load(
        tmp_path,
        train_file=str(tmp_path / "train.jsonl"),
        validation_file=str(tmp_path / "valid.jsonl"),
        max_train_samples=5,
        max_eval_samples=2,
        validation_split_percentage=10,
    )
    assert list(raw) == ["train", "validation"]
    assert raw["train"]["id"] == [0, 1, 2, 3, 4]
    assert raw["validation"]["id"] == [0, 1]


def test_validation_split_is_held_out_of_train(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(jsonl_bytes(RECORDS))
    raw = load(tmp_path, train_file=str(tmp_path / "train.jsonl"), validation_split_percentage=10)
    assert (len(raw["train"]), len(raw["validation"])) == (18, 2)
    assert sorted(list(raw["train"]["id"]) + list(raw["validation"]["id"])) == list(range(20))


def test_load_from_disk_dataset_becomes_train(tmp_path):
    Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "saved"))
    raw = load(tmp_path, dataset_name=str(tmp_path / "saved"), load_from_disk=True)
    assert list(raw) == ["train"]
    assert raw["train"]["id"] == list(range(20))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load(tmp_path, train_file=str(tmp_path / "nope.jsonl"))


def test_missing_saved_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory written by save_to_disk"):
        load(tmp_path, dataset_name=str(tmp_path / "nope"), load_from_disk=True)


def test_unsupported_suffix(tmp_path):
    (tmp_path / "train.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported file type"):
        load(tmp_path, train_file=str(tmp_path / "train.xml"))


def test_mixed_train_and_validation_formats(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(jsonl_bytes(RECORDS))
    (tmp_path / "valid.txt").write_text("a\n")
    with pytest.raises(DataError, match="same format"):
        load(tmp_path, train_file=str(tmp_path / "train.jsonl"), validation_file=str(tmp_path / "valid.txt"))


def test_no_data_given(tmp_path):
    with pytest.raises(DataError, match="No data given"):
        load(tmp_path)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.zst"])
def test_malformed_json_line_names_file_and_line(tmp_path, suffix):
    content = jsonl_bytes(RECORDS[:3]) + b'{"text": broken}\n' + jsonl_bytes(RECORDS[3:])
    path = tmp_path / f"train{suffix}"
    path.write_bytes(zstandard.ZstdCompressor().compress(content) if suffix.endswith(".zst") else content)
    with pytest.raises(DataError, match=rf"train{suffix}, line 4: malformed JSON"):
        load(tmp_path, train_file=str(path))


def test_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl_bytes(RECORDS[:2]) + b"[1, 2]\n")
    with pytest.raises(DataError, match=r"line 3: .*expected a JSON object"):
        load(tmp_path, train_file=str(path))


def test_saved_dataset_without_train_split(tmp_path):
    DatasetDict({"test": Dataset.from_list(RECORDS)}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"no 'train' split \(found: test\)"):
        load(tmp_path, dataset_name=str(tmp_path / "saved"), load_from_disk=True)


def test_empty_train_split(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(jsonl_bytes(RECORDS))
    with pytest.raises(DataError, match="train split is empty"):
        load(tmp_path, train_file=str(tmp_path / "train.jsonl"), max_train_samples=0)


def test_a_zst_file_of_several_frames_loads_whole(tmp_path):
    path = tmp_path / "train.jsonl.zst"
    first, second = jsonl_bytes(RECORDS[:7]), jsonl_bytes(RECORDS[7:])
    path.write_bytes(zstandard.ZstdCompressor().compress(first) + zstandard.ZstdCompressor().compress(second))
    assert texts(load(tmp_path, train_file=str(path))["train"]) == [r["text"] for r in RECORDS]


def test_scan_reports_each_bad_text_value_with_its_line_and_ignores_an_absent_column(tmp_path):
    from diff_trainer.data.loading import scan_file

    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": null}\n{"text": 3.5}\n{"other": "x"}\n')
    assert scan_file(str(path), ["text"]) == {
        1: (f"{path}, line 3", "'text' is null"),
        2: (f"{path}, line 4", "'text' is a float, not a string"),
        3: (f"{path}, line 5", "missing key 'text'"),
    }
    assert scan_file(str(path), ["input_ids"]) == {}  # pre-tokenised data has no text column at all
    document = tmp_path / "train.json"
    document.write_text(json.dumps([{"text": "a"}, {"text": ["b"]}]))
    assert scan_file(str(document), ["text"]) == {1: (f"{document}, record 2", "'text' is a list, not a string")}


def test_a_json_document_that_is_a_list_of_records_or_strings_still_loads(tmp_path):
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"text": "a<DFF>b"}, {"text": "c\ud83d\ude00<DFF>d"}]))  # a surrogate pair is text
    assert texts(load(tmp_path, train_file=str(records))["train"]) == ["a<DFF>b", "c\U0001f600<DFF>d"]
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps(["a<DFF>b", "c<DFF>d"]))
    assert texts(load(tmp_path, train_file=str(strings))["train"]) == ["a<DFF>b", "c<DFF>d"]


def test_rows_datasets_names_are_read_as_lines_of_the_file():
    """pyarrow counts JSON rows from 0 among non-blank lines, pandas CSV rows from 0 among all lines."""
    from diff_trainer.data.loading import read_failure

    class Cause(ValueError):
        pass

    def raised(message):
        try:
            try:
                raise Cause(message)
            except Cause as cause:
                raise RuntimeError("An error occurred while generating the dataset") from cause
        except RuntimeError as error:
            return error

    assert read_failure(raised("C error: EOF inside string starting at row 4"), "a.csv", "csv").startswith(
        "a.csv, line 5: datasets cannot read this (C error: EOF inside string)."
    )
    assert read_failure(raised("C error: Expected 1 fields in line 7, saw 2"), "a.csv", "csv").startswith(
        "a.csv, line 7: datasets cannot read this (C error: Expected 1 fields, saw 2)."
    )
    assert read_failure(raised("something else"), "a.csv", "csv").startswith("a.csv: datasets cannot read this (some")


def test_a_null_text_in_a_saved_dataset_is_named_by_its_1_based_record(tmp_path):
    DatasetDict({"train": Dataset.from_dict({"text": ["a<DFF>b", "c<DFF>d", None]})}).save_to_disk(tmp_path / "saved")
    with pytest.raises(DataError, match=r"saved \(train split\), record 3: 'text' is null"):
        load(tmp_path, dataset_name=str(tmp_path / "saved"), load_from_disk=True)
