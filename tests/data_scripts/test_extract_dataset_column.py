"""data_scripts/extract_dataset_column.py: every output format round-trips; clear errors; no partial output."""

import importlib.util
import json
from pathlib import Path

import datasets
import pytest

from diff_trainer.data.io import read_jsonl, unescape_line, write_lines

SCRIPT = Path(__file__).resolve().parents[2] / "data_scripts" / "extract_dataset_column.py"
_spec = importlib.util.spec_from_file_location("extract_dataset_column", SCRIPT)
extract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(extract)

TEXTS = ["plain", "two\nlines", "back\\slash and \\n literally", "carriage\r\nreturn", "", "ünïcode ✓", "end\\"]
ROWS = {"text": TEXTS, "id": list(range(len(TEXTS)))}


@pytest.fixture(scope="module")
def jsonl_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def saved_dict(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "dict"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(ROWS),
        validation=datasets.Dataset.from_dict({"text": ["v0", "v1"], "id": [0, 1]}),
    ).save_to_disk(str(path))
    return path


def read_txt(path):
    return [unescape_line(line) for line in Path(path).read_text(encoding="utf-8").split("\n")[:-1]]


def test_txt_round_trips_through_the_escapes(jsonl_file, tmp_path):
    output = tmp_path / "out.txt"
    assert extract.extract_column(str(jsonl_file), "text", str(output)) == len(TEXTS)
    assert len(output.read_text(encoding="utf-8").split("\n")) == len(TEXTS) + 1  # one line per record
    assert read_txt(output) == TEXTS


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.zst"])
def test_jsonl_outputs_round_trip(jsonl_file, tmp_path, name):
    output = tmp_path / name
    extract.extract_column(str(jsonl_file), "text", str(output))
    assert list(read_jsonl(output)) == [{"text": text} for text in TEXTS]
    reloaded = datasets.load_dataset("json", data_files=str(output), split="train")
    assert reloaded["text"] == TEXTS


def test_non_string_values_are_written_as_json(jsonl_file, tmp_path):
    extract.extract_column(str(jsonl_file), "id", str(tmp_path / "ids.txt"))
    assert read_txt(tmp_path / "ids.txt") == [str(i) for i in range(len(TEXTS))]
    assert extract.text_line({"a": [1, "x\ny"]}) == '{"a": [1, "x\\\\ny"]}'


def test_missing_column_lists_the_available_ones(jsonl_file, tmp_path):
    output = tmp_path / "out.txt"
    with pytest.raises(ValueError, match="'body' not found; available columns: text, id"):
        extract.extract_column(str(jsonl_file), "body", str(output))
    assert not output.exists()


def test_missing_split_lists_the_available_ones(saved_dict, jsonl_file, tmp_path):
    with pytest.raises(ValueError, match="'test' not found; available splits: train, validation"):
        extract.extract_column(str(saved_dict), "text", str(tmp_path / "out.txt"), split="test")
    with pytest.raises(ValueError, match="available splits: train$"):
        extract.extract_column(str(jsonl_file), "text", str(tmp_path / "out.txt"), split="validation")


def test_reads_a_saved_dataset_dict_and_a_saved_dataset(saved_dict, tmp_path):
    extract.extract_column(str(saved_dict), "text", str(tmp_path / "val.jsonl"), split="validation")
    assert list(read_jsonl(tmp_path / "val.jsonl")) == [{"text": "v0"}, {"text": "v1"}]
    single = tmp_path / "single"
    datasets.Dataset.from_dict(ROWS).save_to_disk(str(single))
    extract.extract_column(str(single), "text", str(tmp_path / "single.txt"))
    assert read_txt(tmp_path / "single.txt") == TEXTS


@pytest.mark.parametrize("suffix, separator", [(".csv", ","), (".tsv", "\t")])
def test_reads_delimited_files(tmp_path, suffix, separator):
    path = tmp_path / f"rows{suffix}"
    path.write_text(f"id{separator}text\n1{separator}alpha\n2{separator}beta\n", encoding="utf-8")
    extract.extract_column(str(path), "text", str(tmp_path / "out.txt"))
    assert read_txt(tmp_path / "out.txt") == ["alpha", "beta"]


@pytest.mark.parametrize("max_samples, expected", [(3, TEXTS[:3]), (0, []), (100, TEXTS)])
def test_max_samples_keeps_the_first_rows(jsonl_file, tmp_path, max_samples, expected):
    output = tmp_path / "out.jsonl"
    assert extract.extract_column(str(jsonl_file), "text", str(output), max_samples=max_samples) == len(expected)
    assert [record["text"] for record in read_jsonl(output)] == expected


def test_unsupported_output_suffix_is_rejected(jsonl_file, tmp_path):
    with pytest.raises(ValueError, match="--output must end in"):
        extract.extract_column(str(jsonl_file), "text", str(tmp_path / "out.csv"))


def test_failed_write_leaves_previous_output_untouched(tmp_path):
    output = tmp_path / "out.txt"
    output.write_text("old\n", encoding="utf-8")

    def lines_then_failure():
        yield "new"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        write_lines(lines_then_failure(), output)
    assert output.read_text(encoding="utf-8") == "old\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left behind


def test_command_line_reports_a_bad_column(jsonl_file, tmp_path):
    output = tmp_path / "out.txt"
    with pytest.raises(SystemExit) as exit_info:  # a string exit: printed to stderr, status 1
        extract.main(["--dataset", str(jsonl_file), "--column", "nope", "--output", str(output)])
    assert isinstance(exit_info.value.code, str) and "available columns: text, id" in exit_info.value.code
    assert not output.exists()
