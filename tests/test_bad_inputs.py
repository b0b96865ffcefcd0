"""Bad inputs and flags, as a table: each case runs an entry point and checks its exit status and its message.

Entry scripts run through `run_entry_point` (DataError: `error: ...` and status 1; a bad flag: usage and status 2),
the CLIs through their `main`. Faults that need a killed process live beside the code they test: a killed dataset
save in tests/data/test_saving.py, half-written checkpoints in tests/test_checkpoints.py, a requeued Slurm job in
tests/test_sbatch_requeue.py. Type guessing is checked by value at the end of this file.
"""

import gzip
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zstandard

import run_clm_diff  # the repository root is on pytest's pythonpath (setup.cfg)
import run_diffusion_dpo
from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer.cli import generate
from diff_trainer.data.loading import load_raw_datasets
from diff_trainer.diffusion_config import write_diffusion_config
from diff_trainer.training.args.data import DataArguments
from diff_trainer.training.runner import run_entry_point

ROOT = Path(__file__).resolve().parents[1]
TINY_LLAMA = (
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,"
    "num_key_value_heads=4,max_position_embeddings=64"
)
GOOD_LINES = [json.dumps({"text": f"{i}+{i}=<DFF>{2 * i}"}) for i in range(8)]


def lines_bytes(lines) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def truncated_zst_at_a_line_end(path: Path) -> None:
    """20,000 records of 64 bytes cut at 12,000 compressed bytes: zstd blocks hold 128 KiB = 2,048 whole records,
    so the decoded part ends at a newline (the case that used to load a part silently)."""
    records = [json.dumps({"text": f"{i:05d} " + "abcdefghi " * 4 + "abcde"}) for i in range(20000)]
    assert {len(record) + 1 for record in records} == {64}
    data = zstandard.ZstdCompressor(level=3).compress(lines_bytes(records))
    cut = data[:12000]
    assert zstandard.ZstdDecompressor().decompressobj().decompress(cut).endswith(b"\n")
    path.write_bytes(cut)


def write(path: Path, content) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# (case id, file name, content, extra flags, exit status, message pattern)
DATA_CASES = [
    (
        "truncated zst ending at a newline",
        "train.jsonl.zst",
        truncated_zst_at_a_line_end,
        [],
        1,
        r"train\.jsonl\.zst: truncated zstd file",
    ),
    (
        "truncated zst cut mid-record",
        "train.jsonl.zst",
        zstandard.ZstdCompressor().compress(lines_bytes(GOOD_LINES * 50))[:-7],
        [],
        1,
        r"train\.jsonl\.zst: truncated zstd file",
    ),
    (
        "truncated gzip",
        "train.jsonl.gz",
        gzip.compress(lines_bytes(GOOD_LINES * 50))[:-9],
        [],
        1,
        r"train\.jsonl\.gz: truncated or corrupt gzip file",
    ),
    ("empty file", "train.jsonl", "", [], 1, r"train\.jsonl: no records \(the file is empty\)"),
    ("blank lines only", "train.txt", "\n\n", [], 1, r"train\.txt: no records"),
    ("csv with only a header", "train.csv", "text\n", [], 1, r"train\.csv: no records .*only a header"),
    (
        "non-UTF-8 bytes",
        "train.jsonl",
        lines_bytes(GOOD_LINES[:2]) + b'{"text": "caf\xe9<DFF>x"}\n',
        [],
        1,
        r"train\.jsonl, line 3: not valid UTF-8 .*iconv",
    ),
    (
        "JSON null text",
        "train.jsonl",
        "\n".join([GOOD_LINES[0], '{"text": null}', GOOD_LINES[1]]),
        [],
        1,
        r"train\.jsonl, line 2: 'text' is null",
    ),
    (
        "JSON number text",
        "train.jsonl",
        "\n".join([GOOD_LINES[0], GOOD_LINES[1], '{"text": 7}']),
        [],
        1,
        r"1 record\(s\) have no usable text: .*train\.jsonl, line 3: 'text' is a int, not a string",
    ),
    (
        "key given twice, a number first",
        "train.jsonl",
        "\n".join([GOOD_LINES[0], '{"text": 7, "text": "1<DFF>2"}']),
        [],
        1,
        r"train\.jsonl, line 2: key 'text' is given twice in a record",
    ),
    (
        "key given twice, a string first",
        "train.jsonl",
        "\n".join([GOOD_LINES[0], '{"text": "1<DFF>2", "text": "x"}']),
        [],
        1,
        r"train\.jsonl, line 2: key 'text' is given twice in a record",
    ),
    (
        "key given twice in a JSON document",
        "train.json",
        '[{"text": "a<DFF>b"}, {"text": 1, "text": "a<DFF>b"}]',
        [],
        1,
        r"train\.json: key 'text' is given twice in a record",
    ),
    (
        "record without the text key",
        "train.jsonl",
        "\n".join([GOOD_LINES[0], '{"body": "x"}']),
        [],
        1,
        r"train\.jsonl, line 2: missing key 'text'",
    ),
    ("empty CSV field", "train.csv", 'text\na<DFF>b\n""\nc<DFF>d\n', [], 1, r"train\.csv, record 2: 'text' is null"),
    (
        "null response column",
        "train.jsonl",
        '{"q": "1+1=", "a": "2"}\n{"q": "2+2=", "a": null}\n',
        ["--prompt_column", "q", "--response_column", "a"],
        1,
        r"train\.jsonl, line 2: 'a' is null",
    ),
    (
        "malformed JSON line",
        "train.jsonl",
        "\n".join([GOOD_LINES[0], '{"text": broken}']),
        [],
        1,
        r"train\.jsonl, line 2: malformed JSON",
    ),
    (
        "JSON line that is not an object",
        "train.jsonl",
        "\n".join([GOOD_LINES[0], "[1, 2]"]),
        [],
        1,
        r"line 2: malformed JSON \(expected a JSON object, got list\)",
    ),
    ("unsupported suffix", "train.xml", "<a/>", [], 1, r"train\.xml: unsupported file type"),
    (
        "JSON dict of columns",
        "train.json",
        json.dumps({"text": ["1+1=<DFF>2", "2+2=<DFF>4"]}),
        [],
        1,
        r"train\.json: holds a dict of columns \('text': lists of values\), not records\. Write one record per line "
        r"\(JSON lines: .*\) or a list of records",
    ),
    (
        "JSON document that is one record",
        "train.json",
        json.dumps({"text": "1+1=<DFF>2"}),
        [],
        1,
        r"train\.json: holds a single JSON object, not a list of records\. Write one record per line",
    ),
    (
        "lone surrogate in a JSON line",
        "train.jsonl",
        "\n".join([GOOD_LINES[0], "", GOOD_LINES[1], '{"text": "caf\\udce9<DFF>x"}']),
        [],
        1,
        r"train\.jsonl, line 4: a \\u escape in 'text' is half of a UTF-16 surrogate pair \(a lone surrogate\)",
    ),
    (
        "lone surrogate in a JSON document",
        "train.json",
        '[{"text": "a<DFF>b"}, {"text": "x", "meta": {"note": "\\ud800"}}]',
        [],
        1,
        r"train\.json, record 2: a \\u escape in 'meta' is half of a UTF-16 surrogate pair",
    ),
    (
        "CSV field with an unclosed quote",
        "train.csv",
        'text\na<DFF>b\n"c<DFF>d\ne<DFF>f\n',
        [],
        1,
        r"train\.csv, line 3: datasets cannot read this \(.*EOF inside string\)\. Quote fields that hold commas",
    ),
    (
        "CSV row with more fields than the header",
        "train.csv",
        "text\na<DFF>b\nc,d<DFF>e\n",
        [],
        1,
        r"train\.csv, line 3: datasets cannot read this \(.*Expected 1 fields, saw 2\)",
    ),
    (
        "JSON column changing type after a blank line (datasets' reader fails)",
        "train.jsonl",
        '{"text": "a<DFF>b", "m": 1}\n\n{"text": "c<DFF>d", "m": {"a": 1}}\n',
        [],
        1,
        r"train\.jsonl, line 3: datasets cannot read this \(Column\(/m\) changed from number to object\)",
    ),
    (
        "missing text column",
        "train.jsonl",
        json.dumps({"body": "a<DFF>b"}),
        [],
        1,
        r"Text column 'text' not in the data; available columns: \['body'\]",
    ),
    (
        "no sample fits and none has <DFF>",
        "train.jsonl",
        json.dumps({"text": "no marker"}),
        ["--dff_labels", "on"],
        1,
        r"train split is empty after filtering",
    ),
]


@pytest.fixture
def clm_flags(tmp_path):
    def build(*extra):
        return [
            "--model_type",
            "llama",
            "--config_overrides",
            TINY_LLAMA,
            "--tokenizer_name",
            "byte",
            "--block_size",
            "16",
            "--output_dir",
            str(tmp_path / "out"),
            "--use_cpu",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--validation_split_percentage",
            "0",
            "--do_train",
            "--max_steps",
            "1",
            *extra,
        ]

    return build


def run_entry(main, argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of an entry script's main run as `python script.py argv` would run it."""
    try:
        status = run_entry_point(main, argv)
    except SystemExit as stopped:
        status = stopped.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "name, content, extra, status, message", [case[1:] for case in DATA_CASES], ids=[case[0] for case in DATA_CASES]
)
def test_bad_data_files(tmp_path, clm_flags, capsys, name, content, extra, status, message):
    path = write(tmp_path / "data" / name, content)
    code, err = run_entry(run_clm_diff.main, clm_flags("--train_file", path, *extra), capsys)
    assert code == status, err
    last_line = err.strip().splitlines()[-1]  # progress bars may come before it, a traceback may not
    assert "Traceback" not in err and "error: " in last_line and re.search(message, last_line), err


FLAG_CASES = [
    ("directory as a file", lambda d: ["--train_file", str(d)], 1, r"data: is a directory, not a data file"),
    ("missing file", lambda d: ["--train_file", str(d / "nope.jsonl")], 1, r"nope\.jsonl: file not found"),
    ("no data", lambda d: [], 1, r"No data given: pass --train_file"),
    (
        "mixed formats",
        lambda d: ["--train_file", str(d / "train.jsonl"), "--validation_file", str(d / "v.txt")],
        1,
        r"must have the same format",
    ),
    (
        "validation split of 100%",
        lambda d: ["--train_file", str(d / "train.jsonl"), "--validation_split_percentage", "100"],
        1,
        r"--validation_split_percentage must be in \[0, 100\) .* got 100",
    ),
    (
        "negative validation split",
        lambda d: ["--train_file", str(d / "train.jsonl"), "--validation_split_percentage", "-5"],
        1,
        r"--validation_split_percentage must be in \[0, 100\)",
    ),
    (
        "--do_eval without validation data",
        lambda d: ["--train_file", str(d / "train.jsonl"), "--do_eval"],
        1,
        r"--do_eval needs validation data: pass --validation_file",
    ),
    (
        "--max_eval_samples 0 with --do_eval",
        lambda d: [
            "--train_file",
            str(d / "train.jsonl"),
            "--do_eval",
            "--validation_split_percentage",
            "25",
            "--max_eval_samples",
            "0",
        ],
        1,
        r"--do_eval has no validation records to evaluate \(--max_eval_samples 0\?\)",
    ),
    (
        "a validation split that leaves no training record",
        lambda d: ["--train_file", str(d / "one.jsonl"), "--validation_split_percentage", "5"],
        1,
        r"--validation_split_percentage 5 of 1 training record\(s\) leaves none to train on",
    ),
    (
        "block size 0",
        lambda d: ["--train_file", str(d / "train.jsonl"), "--block_size", "0"],
        1,
        r"--block_size must be a positive number of tokens, got 0",
    ),
    (
        "block size above the model's positions",
        lambda d: ["--train_file", str(d / "train.jsonl"), "--block_size", "128"],
        1,
        r"--block_size 128 is larger than the model's 64 positions",
    ),
    (
        "load_from_disk of a missing directory",
        lambda d: ["--dataset_name", str(d / "nope"), "--load_from_disk"],
        1,
        r"nope: not a directory written by save_to_disk",
    ),
    (
        "unknown flag",
        lambda d: ["--train_file", str(d / "train.jsonl"), "--blocksize", "8"],
        2,
        r"unrecognized arguments: --blocksize 8",
    ),
    (
        "bad padding side",
        lambda d: ["--train_file", str(d / "train.jsonl"), "--padding_side", "middle"],
        2,
        r"error: --padding_side must be 'left' or 'right', got 'middle'",
    ),
    (
        "--time_eps above 1",
        lambda d: ["--train_diff_model", "--time_eps", "1.5"],
        2,
        r"error: --time_eps is the smallest mask probability, in \[0, 1\]; got 1\.5",
    ),
    (
        "--time_eps below 0",
        lambda d: ["--train_diff_model", "--time_eps", "-0.1"],
        2,
        r"error: --time_eps is the smallest mask probability, in \[0, 1\]; got -0\.1",
    ),
    (
        "sigma_min equal to sigma_max",
        lambda d: [
            "--train_diff_model",
            "--diffusion_objective",
            "sedd_absorb",
            "--sigma_min",
            "20",
            "--sigma_max",
            "20",
        ],
        2,
        r"error: --sigma_min and --sigma_max must satisfy 0 < sigma_min < sigma_max, got 20\.0 and 20\.0",
    ),
    (
        "unknown --noise_schedule",
        lambda d: ["--train_diff_model", "--noise_schedule", "cosin"],
        2,
        r"error: --noise_schedule must be one of linear, cosine, got 'cosin'",
    ),
    (
        "sigma_min above sigma_max",
        lambda d: [
            "--train_diff_model",
            "--diffusion_objective",
            "sedd_absorb",
            "--sedd_noise",
            "geometric",
            "--sigma_min",
            "30",
        ],
        2,
        r"error: --sigma_min and --sigma_max must satisfy 0 < sigma_min < sigma_max, got 30\.0 and 20\.0",
    ),
    (
        "batch size 0",
        lambda d: ["--per_device_train_batch_size", "0"],
        2,
        r"error: --per_device_train_batch_size must be at least 1, got 0",
    ),
    (
        "gradient accumulation 0",
        lambda d: ["--gradient_accumulation_steps", "0"],
        2,
        r"error: --gradient_accumulation_steps must be at least 1, got 0",
    ),
    ("lora rank 0", lambda d: ["--use_lora", "--lora_r", "0"], 2, r"error: --lora_r must be at least 1"),
    ("dropout above 1", lambda d: ["--dropout", "1.2"], 2, r"error: --dropout is a probability in \[0, 1\], got 1\.2"),
    (
        "LoRA dropout below 0",
        lambda d: ["--use_lora", "--lora_dropout", "-0.1"],
        2,
        r"error: --lora_dropout is a probability in \[0, 1\], got -0\.1",
    ),
    (
        "--masked_lm with a decoder-only --model_type",
        lambda d: ["--train_diff_model", "--masked_lm"],
        2,
        r"error: --masked_lm loads an encoder with a masked-LM head \(bert, roberta, modernbert, \.\.\.\); llama has "
        r"none\. Drop --masked_lm",
    ),
    ("missing config file", lambda d: [str(d / "nope.yaml")], 2, r"error: config file \S*nope\.yaml does not exist"),
    (
        "config file that is not YAML",
        lambda d: [str(d / "bad.yaml")],
        2,
        r"error: \S*bad\.yaml: not a valid config file: .*line 2, column",
    ),
    (
        "output_dir holding a model",
        lambda d: ["--output_dir", str(d / "model")],
        1,
        r"error: --output_dir \S*model already holds a trained model \(config\.json\)",
    ),
    (
        "explicit incomplete checkpoint",
        lambda d: ["--train_file", str(d / "train.jsonl"), "--resume_from_checkpoint", str(d / "checkpoint-3")],
        1,
        r"checkpoint-3 is incomplete: no COMPLETE marker and no trainer_state.json",
    ),
]


def test_the_validation_split_refuses_exactly_the_splits_datasets_cannot_make():
    """split_off_validation refuses where datasets' train_test_split leaves no training record, with a DataError
    (one line) instead of datasets' ValueError (a traceback), and otherwise returns datasets' split."""
    from datasets import Dataset

    from diff_trainer.data.loading import DataError, split_off_validation

    for count in range(1, 25):
        records = Dataset.from_dict({"text": [str(i) for i in range(count)]})
        for percentage in (5, 33.3, 50, 95, 96, 99.9):
            try:
                expected = records.train_test_split(test_size=percentage / 100, seed=0)
            except ValueError:
                with pytest.raises(DataError, match="leaves none to train on"):
                    split_off_validation(records, percentage, 0)
                continue
            train, validation = split_off_validation(records, percentage, 0)
            assert train["text"] == expected["train"]["text"] and validation["text"] == expected["test"]["text"]


def test_a_block_size_beyond_the_positions_is_refused_before_packing(tmp_path, clm_flags, capsys, monkeypatch):
    from diff_trainer.data import pipeline

    monkeypatch.setattr(pipeline.Preprocessor, "run", lambda *_: pytest.fail("packed before --block_size was checked"))
    train = write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    code, err = run_entry(run_clm_diff.main, clm_flags("--train_file", train, "--block_size", str(10**12)), capsys)
    assert code == 1 and "error: --block_size 1000000000000 is larger than the model's 64 positions" in err, err


def test_masked_lm_with_a_pretrained_decoder_only_model_names_it(tmp_path):
    """The config alone is read: the refusal comes before any weights are built or loaded."""
    from diff_trainer.data.loading import DataError
    from diff_trainer.models.loading import load_model
    from diff_trainer.training.args.model import ModelArguments

    tokenizer = make_byte_tokenizer()
    make_tiny_llama(len(tokenizer)).config.save_pretrained(tmp_path / "llama")  # a config.json and no weights
    with pytest.raises(
        DataError,
        match=rf"^{re.escape(str(tmp_path / 'llama'))}: --masked_lm loads an encoder .* "
        r"llama has none\.",
    ):
        load_model(ModelArguments(model_name_or_path=str(tmp_path / "llama"), masked_lm=True), tokenizer)


def test_a_validation_split_that_leaves_no_training_pair_is_refused(tmp_path):
    from diff_trainer.data.loading import DataError
    from diff_trainer.data.preference import load_preference_data
    from diff_trainer.training.args.data import PreferenceDataArguments

    path = write(tmp_path / "pairs.jsonl", json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    with pytest.raises(DataError, match=r"--validation_split_percentage 50 of 1 training record\(s\) leaves none"):
        load_preference_data(PreferenceDataArguments(train_file=path, validation_split_percentage=50))


@pytest.mark.parametrize(
    "argv, status, message", [case[1:] for case in FLAG_CASES], ids=[case[0] for case in FLAG_CASES]
)
def test_bad_flags(tmp_path, clm_flags, capsys, argv, status, message):
    data = tmp_path / "data"
    write(data / "train.jsonl", "\n".join(GOOD_LINES))
    write(data / "v.txt", "a<DFF>b\n")
    write(data / "one.jsonl", GOOD_LINES[0])
    write(data / "bad.yaml", "learning_rate: 1e-3\n  max_steps: [4\n")
    write(data / "model" / "config.json", "{}")
    (data / "checkpoint-3").mkdir()
    flags = argv(data)
    if flags and flags[0].endswith(".yaml"):  # a config file comes first
        flags = [flags[0], *clm_flags("--train_file", str(data / "train.jsonl"))]
    else:
        flags = clm_flags(
            *(
                []
                if "--train_file" in flags or "--dataset_name" in flags or not flags
                else ["--train_file", str(data / "train.jsonl")]
            ),
            *flags,
        )
    code, err = run_entry(run_clm_diff.main, flags, capsys)
    assert code == status, err
    assert "Traceback" not in err and re.search(message, err), err


UNWRITABLE = "/sys/kernel"  # sysfs refuses new files even to root


def refuses_new_files(directory: str) -> bool:
    try:
        os.close(os.open(os.path.join(directory, ".probe"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:
        return os.path.isdir(directory)
    os.unlink(os.path.join(directory, ".probe"))
    return False


@pytest.mark.skipif(not refuses_new_files(UNWRITABLE), reason=f"needs {UNWRITABLE} of a sysfs, which refuses files")
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--output_dir", f"{UNWRITABLE}/out"], f"--output_dir {UNWRITABLE}/out: cannot write there"),
        (
            ["--save_final_dataset", f"{UNWRITABLE}/rows", "--do_train", "false"],
            f"--save_final_dataset {UNWRITABLE}/rows: cannot write there",
        ),
    ],
    ids=["--output_dir", "--save_final_dataset"],
)
def test_a_directory_where_nothing_can_be_written_is_named(tmp_path, clm_flags, capsys, flags, message):
    """Refused by probing with a file (root may write whatever the permission bits say), --output_dir before any
    data is read (the training file given does not exist)."""
    train = tmp_path / ("missing.jsonl" if "--output_dir" in flags else "train.jsonl")
    if "--save_final_dataset" in flags:
        write(train, "\n".join(GOOD_LINES))
    code, err = run_entry(run_clm_diff.main, clm_flags("--train_file", str(train), *flags), capsys)
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.endswith(
        f"{message} (it would be made in {UNWRITABLE}): Permission denied. Choose a writable directory."
    ), err
    assert "Traceback" not in err


def test_a_read_only_output_dir_is_refused_before_training(tmp_path):
    """A read-only tmpfs mounted in a user and mount namespace of its own (`unshare -rm`), as a read-only mount of a
    cluster's file system would be."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here (unshare -rm) to mount a read-only file system in")
    mount, out = tmp_path / "read-only", tmp_path / "read-only" / "runs" / "out"
    mount.mkdir()
    script = (
        f'mount -t tmpfs -o ro tmpfs "{mount}" && PYTHONPATH="{ROOT}" "{sys.executable}" -m diff_trainer.cli.train '
        f'--output_dir "{out}" --do_train --train_file "{tmp_path / "missing.jsonl"}" --tokenizer_name byte'
    )
    ran = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 1 and ran.stderr.strip().splitlines()[-1] == (
        f"train.py: error: --output_dir {out}: cannot write there (it would be made in {mount}): Read-only file "
        "system. Choose a writable directory."
    ), ran.stderr


def test_yaml_save_final_dataset_true_is_the_bare_flag(tmp_path, monkeypatch, clm_flags, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    write(tmp_path / "config.yaml", "save_final_dataset: true\n")
    argv = ["config.yaml", *clm_flags("--train_file", "train.jsonl", "--do_train", "false")]
    assert run_entry(run_clm_diff.main, argv, capsys)[0] == 0
    assert (tmp_path / "final_dataset" / "dataset_dict.json").is_file() and not (tmp_path / "true").exists()


def test_save_final_dataset_refuses_an_existing_directory(tmp_path, clm_flags, capsys):
    write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    (tmp_path / "rows").mkdir()
    code, err = run_entry(
        run_clm_diff.main,
        clm_flags("--train_file", str(tmp_path / "train.jsonl"), "--save_final_dataset", str(tmp_path / "rows")),
        capsys,
    )
    assert code == 1 and "rows already exists; pass --overwrite_final_dataset" in err


@pytest.mark.parametrize("diffusion", [True, False], ids=["diffusion", "causal"])
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, clm_flags, capsys, diffusion):
    """Learning rate 1e30: step 1 is finite, its update makes the step-2 loss NaN. The run stops there with one
    line, checkpoint-1 stays the newest complete checkpoint, and no final model is written."""
    train = write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    flags = ["--train_diff_model"] * diffusion + ["--learning_rate", "1e30", "--max_steps", "6", "--save_steps", "1"]
    code, err = run_entry(run_clm_diff.main, clm_flags("--train_file", train, *flags), capsys)
    assert code == 1 and "Traceback" not in err
    assert re.search(
        r"error: the (training loss is NaN or inf|gradient norm is nan) at step 2\. Usual causes: a "
        r"--learning_rate too high",
        err.strip().splitlines()[-1],
    ), err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1"]
    assert (out / "checkpoint-1" / "COMPLETE").is_file()


def test_a_nan_loss_on_one_micro_batch_stops_before_the_update(tmp_path, clm_flags, capsys, monkeypatch):
    """The loss of the second micro-batch of step 3 is NaN: the run stops at step 3, before its optimizer step."""
    from diff_trainer.training.trainer import DiffusionTrainer

    calls = []
    compute_loss = DiffusionTrainer.compute_loss

    def nan_on_the_sixth_micro_batch(self, *args, **kwargs):
        loss = compute_loss(self, *args, **kwargs)
        calls.append(self.state.global_step)
        return loss * torch.nan if len(calls) == 6 else loss

    monkeypatch.setattr(DiffusionTrainer, "compute_loss", nan_on_the_sixth_micro_batch)
    train = write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    flags = [
        "--train_diff_model",
        "--max_steps",
        "5",
        "--save_steps",
        "1",
        "--gradient_accumulation_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
    ]
    code, err = run_entry(run_clm_diff.main, clm_flags("--train_file", train, *flags), capsys)
    assert code == 1 and "error: the training loss is NaN or inf at step 3. Usual causes" in err, err
    assert calls == [0, 0, 1, 1, 2, 2]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-1", "checkpoint-2"]


def test_weights_that_overflow_are_never_saved(tmp_path, clm_flags, capsys):
    """Learning rate 1e39 (inf in float32) with finite loss and gradients: the first save refuses the weights."""
    train = write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    flags = ["--learning_rate", "1e39", "--max_grad_norm", "0", "--max_steps", "2", "--save_steps", "1"]
    code, err = run_entry(run_clm_diff.main, clm_flags("--train_file", train, *flags), capsys)
    assert code == 1 and "error: the weights hold NaN or inf values after step 1; nothing was saved" in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("content", ["", '{"model_type": "llama", "hidden_'], ids=["empty", "cut"])
def test_a_broken_config_json_is_named(checkpoints, tmp_path, content):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoints / "causal", broken)
    (broken / "config.json").write_text(content)
    with pytest.raises(SystemExit) as stopped:
        generate.main(["--model", str(broken), "--prompt", "1+1="])
    assert re.fullmatch(
        r"error: \S*broken/config\.json: not a valid config \(.*\); the file is empty or cut.*", str(stopped.value.code)
    ), stopped.value.code


def test_commands_refuse_a_checkpoint_with_non_finite_weights(tmp_path, capsys):
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer), bidirectional=False, max_position_embeddings=64)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(tmp_path / "diverged")
    tokenizer.save_pretrained(tmp_path / "diverged")
    with pytest.raises(SystemExit) as stopped:
        generate.main(["--model", str(tmp_path / "diverged"), "--prompt", "1+1="])
    assert re.fullmatch(
        r"error: \S*diverged: weight model\.layers\.1\.mlp\.up_proj\.weight holds NaN or inf values "
        r"\(the run that wrote it diverged\)\. Use an earlier checkpoint-N.*",
        str(stopped.value.code),
    )


@pytest.mark.parametrize("final_model_saved", [True, False], ids=["finished run", "killed before the final save"])
def test_resuming_a_finished_run_trains_nothing(tmp_path, clm_flags, capsys, caplog, final_model_saved):
    """--resume from a checkpoint at max_steps: no step, no checkpoint-N+1; a final model missing because the run was
    killed after its last checkpoint is written from that checkpoint."""
    import logging

    from safetensors.torch import load_file

    train = write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    flags = clm_flags(
        "--train_file",
        train,
        "--train_diff_model",
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--learning_rate",
        "1e-2",
        "--validation_file",
        train,
        "--do_eval",
        "--eval_mc_samples",
        "2",
    )
    assert run_entry(run_clm_diff.main, flags, capsys)[0] == 0
    out = tmp_path / "out"
    evaluated = json.loads((out / "eval_results.json").read_text())
    final = load_file(out / "model.safetensors")
    if not final_model_saved:
        (out / "model.safetensors").unlink()
    with caplog.at_level(logging.INFO, logger="diff_trainer"):
        assert run_entry(run_clm_diff.main, [*flags, "--resume", "true"], capsys)[0] == 0
    assert f"{out / 'checkpoint-2'} already reached step 2 of --max_steps 2: nothing to train" in caplog.text
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    again = load_file(out / "model.safetensors")
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    again = json.loads((out / "eval_results.json").read_text())
    assert again["eval_loss"] == evaluated["eval_loss"]  # the trained weights are evaluated again, not fresh ones
    assert again["eval_elbo_perplexity"] == evaluated["eval_elbo_perplexity"]


@pytest.mark.parametrize(
    "changed, message",
    [
        (["--noise_schedule", "cosine"], r"noise_schedule 'linear' there, 'cosine' here"),
        (["--time_eps", "0.01"], r"time_eps 0\.001 there, 0\.01 here"),
        (["--train_diff_model", "false"], r"it is a diffusion model, this run trains a causal LM"),
        (["--diffusion_objective", "sedd_absorb"], r"objective 'masked_diffusion' there, 'sedd_absorb' here"),
        (
            ["--tokenizer_name", "char"],
            r"a vocabulary of 386 tokens there, 16 here; pad_token_id 0 there, 1 here; eos_token_id 1 there, 2 here; "
            r"mask_token_id 385 there, 3 here",
        ),
        (["--dff_token", "<DIFF>"], r"another tokenizer with the same 386 tokens \(other token -> id mapping\)"),
        (
            ["--config_overrides", TINY_LLAMA.replace("hidden_size=32", "hidden_size=64")],
            r"hidden_size 32 there, 64 here",
        ),
        (
            ["--config_overrides", TINY_LLAMA.replace("num_hidden_layers=2", "num_hidden_layers=3")],
            r"num_hidden_layers 2 there, 3 here",
        ),
    ],
    ids=["schedule", "time_eps", "causal", "objective", "tokenizer", "token mapping", "hidden size", "layers"],
)
def test_resume_with_other_settings_names_what_differs(tmp_path, clm_flags, capsys, monkeypatch, changed, message):
    from diff_trainer.data import pipeline

    train = write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    flags = clm_flags("--train_file", train, "--train_diff_model", "--max_steps", "1", "--save_steps", "1")
    assert run_entry(run_clm_diff.main, flags, capsys)[0] == 0
    config = (tmp_path / "out" / "config.json").read_text()

    def no_preprocessing(*args, **kwargs):
        raise AssertionError("preprocessing started")

    monkeypatch.setattr(pipeline.Preprocessor, "run", no_preprocessing)
    code, err = run_entry(run_clm_diff.main, [*flags, "--max_steps", "2", "--resume", "true", *changed], capsys)
    assert code == 1 and re.search(
        r"error: \S*checkpoint-1 cannot be resumed with these flags: "
        + message
        + r"[^.]*\. Pass the checkpoint's settings",
        err,
    ), err
    assert (tmp_path / "out" / "config.json").read_text() == config and not (tmp_path / "out" / "checkpoint-2").exists()


def run_with_file_size_limit(argv: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """The training entry point in a subprocess whose files may not grow beyond `limit` bytes: with SIGXFSZ ignored,
    the kernel fails the write with EFBIG, as a full disk fails it with ENOSPC."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "diff_trainer.cli.train", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=600,
    )


@pytest.mark.parametrize(
    "limit, failing_file",
    [(100_000, "model.safetensors"), (300_000, "optimizer.pt")],
    ids=["weights (safetensors)", "optimizer state (torch.save)"],
)
def test_a_checkpoint_that_does_not_fit_is_removed_and_the_previous_one_resumes(
    tmp_path, clm_flags, capsys, limit, failing_file
):
    """The tiny model's weights are 183 KB and its optimizer state 380 KB: a run resumed under the limit fails at
    checkpoint-2, names the file, removes the half-written checkpoint and keeps checkpoint-1, which a later --resume
    continues from."""
    train = write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    flags = clm_flags("--train_file", train, "--train_diff_model", "--save_steps", "1")
    assert run_entry(run_clm_diff.main, flags, capsys)[0] == 0
    out = tmp_path / "out"
    resumed = [*flags, "--max_steps", "2", "--resume", "true"]
    stopped = run_with_file_size_limit(resumed, limit, tmp_path)
    assert stopped.returncode == 1, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"train.py: error: the file-size limit (ulimit -f: {limit} bytes) was reached while writing "
        f"{out}/checkpoint-2/{failing_file}; {out}/checkpoint-2 was removed. {out}/checkpoint-1 is complete: free "
        "space and continue with --resume."
    )
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert run_entry(run_clm_diff.main, resumed, capsys)[0] == 0
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert (out / "checkpoint-2" / "COMPLETE").is_file()


def test_a_final_model_that_does_not_fit_leaves_no_weights(tmp_path, clm_flags):
    train = write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    stopped = run_with_file_size_limit(
        clm_flags("--train_file", train, "--train_diff_model", "--save_strategy", "no"), 100_000, tmp_path
    )
    out = tmp_path / "out"
    assert stopped.returncode == 1, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"train.py: error: the file-size limit (ulimit -f: 100000 bytes) was reached while writing "
        f"{out}/model.safetensors; no final model was saved, and no checkpoint either: free space and train again."
    )
    assert not list(out.glob("*.safetensors")) and not list(out.glob("checkpoint-*"))


def test_a_full_disk_at_the_final_save_keeps_the_checkpoint_that_resume_saves_from(
    tmp_path, clm_flags, capsys, monkeypatch
):
    import errno

    from diff_trainer.training.checkpoints import FiniteStepsMixin

    saved = FiniteStepsMixin.save_model

    def full_at_the_final_save(self, output_dir=None, _internal_call=False):
        if _internal_call:  # a checkpoint
            return saved(self, output_dir, _internal_call)
        weights = os.path.join(self.args.output_dir, "model.safetensors")
        Path(weights).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", weights)

    train = write(tmp_path / "train.jsonl", "\n".join(GOOD_LINES))
    flags = clm_flags("--train_file", train, "--train_diff_model", "--save_steps", "1")
    monkeypatch.setattr(FiniteStepsMixin, "save_model", full_at_the_final_save)
    code, err = run_entry(run_clm_diff.main, flags, capsys)
    out = tmp_path / "out"
    assert code == 1 and re.fullmatch(
        rf"\S+: error: no space left on \S+ \(mounted at /\S*\) while writing {out}/model\.safetensors; "
        rf"no final model was saved; {out}/checkpoint-1 holds its weights: free space and run again with --resume, "
        r"which saves the final model from it\.",
        err.strip().splitlines()[-1],
    ), err
    assert not (out / "model.safetensors").exists()
    monkeypatch.setattr(FiniteStepsMixin, "save_model", saved)
    assert run_entry(run_clm_diff.main, [*flags, "--resume", "true"], capsys)[0] == 0
    assert (out / "model.safetensors").read_bytes() == (out / "checkpoint-1" / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------------------------
# DPO


@pytest.fixture(scope="module")
def diffusion_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("dpo") / "policy"
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer), max_position_embeddings=64)
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token="<DFF>",
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


PAIR = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
DPO_CASES = [
    (
        "one number names that record only",
        [PAIR, {**PAIR, "chosen": 5}, PAIR],
        [],
        1,
        r"train: 1 of 3 records are not valid preference pairs \(1 'chosen' is a int, not a string\)\. "
        r"First: \S*pairs\.jsonl, line 2: 'chosen' is a int, not a string\. Fix them",
    ),
    (
        "null and missing keys",
        [PAIR, {**PAIR, "rejected": None}, {"prompt": "x", "chosen": "y"}],
        [],
        1,
        r"line 2: 'rejected' is null; \S*pairs\.jsonl, line 3: missing key 'rejected'",
    ),
    (
        "missing column",
        [{"prompt": "a", "chosen": "b", "loser": "c"}],
        [],
        1,
        r"Column\(s\) \['rejected'\] not in the data.*--rejected_column",
    ),
    (
        "every pair invalid in skip mode",
        [{**PAIR, "rejected": "2"}],
        ["--invalid_pairs", "skip"],
        1,
        r"train: no valid preference pair left",
    ),
    (
        "no pair fits max_length",
        [{**PAIR, "chosen": "2" * 40, "rejected": "3" * 40}],
        [],
        1,
        r"train: no pair fits max_length 16",
    ),
    ("bad --invalid_pairs", [PAIR], ["--invalid_pairs", "maybe"], 2, r"--invalid_pairs must be one of"),
]


@pytest.mark.parametrize(
    "records, extra, status, message", [case[1:] for case in DPO_CASES], ids=[case[0] for case in DPO_CASES]
)
def test_bad_preference_data(tmp_path, diffusion_checkpoint, capsys, records, extra, status, message):
    pairs = write(tmp_path / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    argv = [
        "--model_name_or_path",
        diffusion_checkpoint,
        "--train_file",
        pairs,
        "--output_dir",
        str(tmp_path / "o"),
        "--invalid_pairs",
        "error",
        "--max_length",
        "16",
        "--use_cpu",
        "--report_to",
        "none",
        "--do_train",
        "--max_steps",
        "1",
        *extra,
    ]
    code, err = run_entry(run_diffusion_dpo.main, argv, capsys)
    assert code == status, err
    assert "Traceback" not in err and re.search(message, err), err


def test_a_dpo_resume_from_another_architecture_names_it_before_the_model_loads(
    tmp_path, diffusion_checkpoint, capsys, monkeypatch
):
    from diff_trainer.cli import dpo

    wider = tmp_path / "wider"
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer), max_position_embeddings=64, hidden_size=48)
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token="<DFF>",
    )
    model.save_pretrained(wider)
    tokenizer.save_pretrained(wider)
    pairs = write(tmp_path / "pairs.jsonl", "".join(json.dumps({**PAIR, "chosen": str(i)}) + "\n" for i in range(4)))
    argv = [
        *("--model_name_or_path", diffusion_checkpoint, "--train_file", pairs, "--output_dir", str(tmp_path / "o")),
        *("--max_length", "16", "--use_cpu", "--report_to", "none", "--do_train", "--save_steps", "1"),
    ]
    assert run_entry(run_diffusion_dpo.main, [*argv, "--max_steps", "1"], capsys)[0] == 0

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(dpo, "prepare_model", no_model)
    resumed = [*argv, "--max_steps", "2", "--resume", "true", "--model_name_or_path", str(wider)]
    code, err = run_entry(run_diffusion_dpo.main, resumed, capsys)
    assert code == 1 and re.search(
        r"error: \S*checkpoint-1 cannot be resumed with these flags: hidden_size 32 there, 48 here[^.]*\. Pass", err
    ), err


# ------------------------------------------------------------------------------------------------------------
# diff-generate


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer), bidirectional=False, max_position_embeddings=64)
    for name in ("causal", "no_tokenizer"):
        model.save_pretrained(root / name)
    tokenizer.save_pretrained(root / "causal")
    return root


GENERATE_CASES = [
    (
        "missing model directory",
        lambda r: ["--model", str(r / "nope")],
        1,
        r"error: no checkpoint at \S*nope: expected a directory written by save_pretrained",
    ),
    (
        "a directory without config.json",
        lambda r: ["--model", str(r)],
        1,
        r"error: no checkpoint at \S*: the directory has neither config\.json nor adapter_config\.json",
    ),
    (
        "checkpoint without tokenizer files",
        lambda r: ["--model", str(r / "no_tokenizer")],
        1,
        r"error: \S*no_tokenizer: no tokenizer files next to the model",
    ),
    (
        "--gen_length 0 on a causal checkpoint",
        lambda r: ["--model", str(r / "causal"), "--gen_length", "0"],
        2,
        r"--samples, --batch_size and --gen_length must be at least 1",
    ),
    (
        "--output in a missing directory",
        lambda r: ["--model", str(r / "causal"), "--output", str(r / "missing" / "out.jsonl")],
        2,
        r"--output \S*missing/out\.jsonl: its directory does not exist; create it first",
    ),
    # checked when the flags are parsed: the model directory "nope" is never opened (that would be status 1)
    *(
        (
            f"--temperature {value}",
            lambda r, value=value: ["--model", str(r / "nope"), "--temperature", value],
            2,
            rf"argument --temperature: {value} is not a temperature: give a finite number >= 0",
        )
        for value in ("nan", "inf", "-0.5")
    ),
    (
        "--temperature -1 on a causal checkpoint",
        lambda r: ["--model", str(r / "causal"), "--temperature", "-1"],
        2,
        r"argument --temperature: -1 is not a temperature",
    ),
    *(
        (
            f"--threshold {value}",
            lambda r, value=value: ["--model", str(r / "nope"), "--threshold", value],
            2,
            rf"argument --threshold: {value} is not a confidence threshold: give a number in \(0, 1\]",
        )
        for value in ("0", "1.5", "-0.2", "nan")
    ),
    (
        "--threshold that is not a number",
        lambda r: ["--model", str(r / "nope"), "--threshold", "high"],
        2,
        r"argument --threshold: 'high' is not a number",
    ),
    (
        "--output that is a directory",
        lambda r: ["--model", str(r / "nope"), "--output", str(r)],
        2,
        r"--output \S+ is a directory; give the name of a file to write",
    ),
]


@pytest.mark.parametrize(
    "argv, status, message", [case[1:] for case in GENERATE_CASES], ids=[case[0] for case in GENERATE_CASES]
)
def test_bad_generate_arguments(checkpoints, capsys, argv, status, message):
    with pytest.raises(SystemExit) as stopped:
        generate.main([*argv(checkpoints), "--prompt", "1+1="])
    err = capsys.readouterr().err + (stopped.value.code if isinstance(stopped.value.code, str) else "")
    code = 1 if isinstance(stopped.value.code, str) else stopped.value.code
    assert code == status, err
    assert re.search(message, err), err
    assert not (checkpoints / "missing").exists()


@pytest.mark.parametrize("command, flag", [("view", "--gif"), ("cascade", "--gif"), ("cascade", "--output")])
@pytest.mark.parametrize("where", ["a directory", "a missing directory"])
def test_gif_and_output_files_are_checked_before_any_model_loads(tmp_path, capsys, command, flag, where):
    from diff_trainer.cli import generate_cascade, view

    target = tmp_path if where == "a directory" else tmp_path / "missing" / "out.jsonl"
    model = (
        ["--model", str(tmp_path / "nope"), "--prompt", "1+1="]
        if command == "view"
        else ["--stages", str(tmp_path / "nope")]
    )
    with pytest.raises(SystemExit) as stopped:  # the model directory does not exist: it is never opened
        (view if command == "view" else generate_cascade).main([*model, flag, str(target)])
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    expected = (
        "is a directory; give the name of a file to write"
        if where == "a directory"
        else "its directory does not exist; create it first"
    )
    assert f"error: {flag} {target}" in err and expected in err, err
    assert not (tmp_path / "missing").exists()


PROMPT_FILE_CASES = [
    ("missing", None, r"error: --prompt_file \S*prompts\.jsonl: no such file\."),
    ("malformed", '{"prompt": "a"}\n{"prompt": b}\n', r"error: \S*prompts\.jsonl, line 2: malformed JSON"),
    ("no prompt key", '{"prompt": "a"}\n\n{"text": "b"}\n', r"error: \S*prompts\.jsonl, line 3: missing key 'prompt'"),
    ("a number", '{"prompt": 7}\n', r"error: \S*prompts\.jsonl, line 1: 'prompt' is a int, not a string"),
    ("not UTF-8", b'{"prompt": "caf\xe9"}\n', r"error: \S*prompts\.jsonl, line 1: not valid UTF-8"),
]


@pytest.mark.parametrize(
    "content, message", [case[1:] for case in PROMPT_FILE_CASES], ids=[case[0] for case in PROMPT_FILE_CASES]
)
def test_bad_prompt_files_are_refused_before_the_model_loads(tmp_path, content, message):
    path = tmp_path / "prompts.jsonl"
    if content is not None:
        write(path, content)
    with pytest.raises(SystemExit) as stopped:  # the model directory does not exist: it is never opened
        generate.main(["--model", str(tmp_path / "no-model"), "--prompt_file", str(path)])
    assert re.fullmatch(message + ".*", str(stopped.value.code)), stopped.value.code


# ------------------------------------------------------------------------------------------------------------
# A UTF-8 byte-order mark is not text

BOM = "\ufeff"


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz", ".jsonl", ".json", ".csv"])
def test_a_byte_order_mark_is_dropped_from_training_files(tmp_path, suffix):
    records = ["a<DFF>b", "c<DFF>d"]
    content = {
        ".txt": "\n".join(records) + "\n",
        ".jsonl": "".join(json.dumps({"text": r}) + "\n" for r in records),
        ".json": json.dumps([{"text": r} for r in records]),
        ".csv": "text\n" + "\n".join(records) + "\n",
    }
    data = (BOM + content[suffix.removesuffix(".gz")]).encode()
    path = write(tmp_path / f"train{suffix}", gzip.compress(data) if suffix.endswith(".gz") else data)
    raw = load_raw_datasets(
        DataArguments(train_file=path, validation_split_percentage=0), cache_dir=str(tmp_path / "cache")
    )
    assert [text.rstrip("\n") for text in raw["train"]["text"]] == records


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_byte_order_mark_is_dropped_from_prompt_files(tmp_path, suffix):
    prompts = ["1+1=", "2+2="]
    lines = prompts if suffix == ".txt" else [json.dumps({"prompt": p}) for p in prompts]
    path = write(tmp_path / f"prompts{suffix}", BOM + "\r\n".join(lines) + "\r\n")
    assert generate.read_prompts(path) == prompts


# ------------------------------------------------------------------------------------------------------------
# Text is read exactly as written (no type guessing)

EXACT_TEXTS = ["001", "2", "1.50", "1e3", "007", "NA", "null", "None", "2020-01-01", "true"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_text_columns_are_read_as_written(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        path.write_text("prompt,response,id\n" + "".join(f"{t},{t},{i}\n" for i, t in enumerate(EXACT_TEXTS)))
    else:
        records = [{"prompt": t, "response": t, "id": i} for i, t in enumerate(EXACT_TEXTS)]
        path.write_text("".join(json.dumps(r) + "\n" for r in records) if suffix == ".jsonl" else json.dumps(records))
    raw = load_raw_datasets(
        DataArguments(
            train_file=str(path), prompt_column="prompt", response_column="response", validation_split_percentage=0
        ),
        cache_dir=str(tmp_path / "cache"),
    )
    assert raw["train"]["prompt"] == EXACT_TEXTS and raw["train"]["response"] == EXACT_TEXTS


@pytest.mark.parametrize("value", [7, 2.5, {"a": 1}, ["x"], True], ids=["int", "float", "object", "list", "bool"])
def test_one_non_string_among_strings_keeps_every_other_string_exact(tmp_path, value):
    """datasets types a column with one JSON number or object as numbers or JSON (and would give every string back
    with its quotes); the loader takes the strings from the file and names the record, so DPO skips exactly it."""
    from diff_trainer.data.preference import load_preference_data
    from diff_trainer.training.args.data import PreferenceDataArguments

    texts = ["007", "1.50", "1e3", 'say "hi"', "[1]"]
    records = [{"prompt": "a", "chosen": text, "rejected": "x", "id": i} for i, text in enumerate(texts)]
    records.insert(1, {"prompt": "b", "chosen": value, "rejected": "y", "id": 9})
    path = write(tmp_path / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    raw, _ = load_preference_data(PreferenceDataArguments(train_file=path))
    assert raw["train"]["chosen"] == texts and raw["train"]["id"] == list(range(len(texts)))
    assert raw["train"].column_names[:4] == ["prompt", "chosen", "rejected", "id"]
    assert os.path.exists(path)
