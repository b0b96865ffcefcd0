"""data_scripts/make_cascade_data.py: stage records, nested prefixes, shards, no-op re-runs, merge errors."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diff_trainer.data.io import read_jsonl, write_jsonl

pytest.importorskip("yake", reason="the keyword stages need the [data] extra: pip install -e '.[data]'")

SCRIPT = Path(__file__).resolve().parents[2] / "data_scripts" / "make_cascade_data.py"
_spec = importlib.util.spec_from_file_location("make_cascade_data", SCRIPT)
cascade = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cascade)

DOCUMENTS = [
    "Masked diffusion models denoise tokens in parallel. The sampler unmasks confident tokens first.",
    "",
    "Gradient checkpointing trades compute for memory during training of large transformers.",
    "A record with <DFF> inside is skipped.",
    "Rivers carry sediment downstream; deltas form where rivers meet the sea and sediment settles.",
    "Keyword extraction with YAKE needs no model download and runs offline on any text.",
    "Compilers translate source programs into machine code through parsing, optimisation and emission.",
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "docs.jsonl.zst"
    write_jsonl(({"text": text, "id": index} for index, text in enumerate(DOCUMENTS)), path)
    return path


def test_stage_texts_by_hand():
    text = "beta then alpha, later gamma and delta"
    ranked = ["gamma", "alpha", "delta", "beta"]  # best first
    assert cascade.stage_texts(text, ranked, [2, 4], "<SEP>") == [
        "<DFF> alpha <SEP> gamma",
        "alpha <SEP> gamma <DFF> beta <SEP> alpha <SEP> gamma <SEP> delta",
        f"beta <SEP> alpha <SEP> gamma <SEP> delta <DFF> {text}",
    ]
    assert cascade.stage_texts(text, ranked, [1], "|") == ["<DFF> gamma", f"gamma <DFF> {text}"]


def split_record(text):
    condition, target = text.split("<DFF>", 1)
    return condition.strip(), target.strip()


def test_one_shard_gives_nested_prefixes_and_counts_skips(corpus, tmp_path):
    summary = cascade.build_shard(str(corpus), tmp_path / "out", "keywords", [3, 6])
    assert summary["documents"] == 5 and summary["skipped"] == {"empty": 1, "marker_in_text": 1, "no_keywords": 0}
    stages = [
        list(read_jsonl(tmp_path / "out" / f"stage{stage}" / "shard-00000-of-00001.jsonl.zst")) for stage in (1, 2, 3)
    ]
    kept = [index for index, text in enumerate(DOCUMENTS) if text and "<DFF>" not in text]
    for stage in stages:
        assert [record["doc_index"] for record in stage] == kept
    for first, second, third in zip(*stages):
        text = DOCUMENTS[first["doc_index"]]
        ranked = cascade.ranked_keywords(text, "keywords", 6)
        condition1, k1 = split_record(first["text"])
        k1_again, k2 = split_record(second["text"])
        k2_again, target = split_record(third["text"])
        assert first["text"].startswith("<DFF> ") and condition1 == ""
        assert (k1_again, k2_again, target) == (k1, k2, text)
        assert set(k1.split(" <SEP> ")) == set(ranked[:3]) and set(k2.split(" <SEP> ")) == set(ranked[:6])
        positions = [text.lower().find(keyword.lower()) for keyword in k2.split(" <SEP> ")]
        assert positions == sorted(positions) and min(positions) >= 0


def test_keyphrases_hold_multi_word_prefixes(corpus, tmp_path):
    cascade.build_shard(str(corpus), tmp_path / "out", "keyphrases", [2, 4])
    stage2 = list(read_jsonl(tmp_path / "out" / "stage2" / "shard-00000-of-00001.jsonl.zst"))
    phrases = [phrase for record in stage2 for phrase in split_record(record["text"])[1].split(" <SEP> ")]
    assert any(" " in phrase for phrase in phrases)


def test_shards_merge_back_to_the_single_run(corpus, tmp_path):
    cascade.build_shard(str(corpus), tmp_path / "whole", num_keywords=[3, 6])
    for index in range(3):
        summary = cascade.build_shard(
            str(corpus), tmp_path / "parts", num_keywords=[3, 6], shard_idx=index, num_shards=3
        )
        records = read_jsonl(tmp_path / "parts" / "stage3" / f"shard-{index:05d}-of-00003.jsonl.zst")
        assert all(record["doc_index"] % 3 == index for record in records) and "already_done" not in summary
    merged = cascade.merge_shards(tmp_path / "parts")
    assert merged["documents"] == 5 and merged["skipped"] == {"empty": 1, "marker_in_text": 1, "no_keywords": 0}
    for stage in (1, 2, 3):
        assert list(read_jsonl(tmp_path / "parts" / f"stage{stage}.jsonl.zst")) == list(
            read_jsonl(tmp_path / "whole" / f"stage{stage}" / "shard-00000-of-00001.jsonl.zst")
        )


def test_finished_shard_rerun_is_a_noop_and_other_settings_are_refused(corpus, tmp_path):
    cascade.build_shard(str(corpus), tmp_path / "out", num_keywords=[3, 6], shard_idx=1, num_shards=2)
    stage_file = tmp_path / "out" / "stage1" / "shard-00001-of-00002.jsonl.zst"
    modified = stage_file.stat().st_mtime_ns
    again = cascade.build_shard(str(corpus), tmp_path / "out", num_keywords=[3, 6], shard_idx=1, num_shards=2)
    assert again["already_done"] and stage_file.stat().st_mtime_ns == modified
    with pytest.raises(ValueError, match="was built with other settings"):
        cascade.build_shard(str(corpus), tmp_path / "out", num_keywords=[2, 6], shard_idx=1, num_shards=2)


def test_merge_refuses_missing_and_mixed_shards(corpus, tmp_path):
    cascade.build_shard(str(corpus), tmp_path / "out", num_keywords=[3, 6], shard_idx=1, num_shards=2)
    with pytest.raises(ValueError, match=r"missing or unfinished shards \[0\] of 2"):
        cascade.merge_shards(tmp_path / "out")
    cascade.build_shard(str(corpus), tmp_path / "out", num_keywords=[3, 6], shard_idx=0, num_shards=3)
    with pytest.raises(ValueError, match="overlapping shards of different runs"):
        cascade.merge_shards(tmp_path / "out")
    assert not (tmp_path / "out" / "stage1.jsonl.zst").exists()


def test_failing_shard_leaves_no_files(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine words here"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: record 2 has no string column 'text'"):
        cascade.build_shard(str(path), tmp_path / "out", num_keywords=[1, 2])
    assert [item for item in (tmp_path / "out").rglob("*") if item.is_file()] == []


def test_cli_with_processes_matches_in_process_run(corpus, tmp_path):
    cascade.build_shard(str(corpus), tmp_path / "serial", num_keywords=[4, 8])
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--input",
            str(corpus),
            "--output_dir",
            str(tmp_path / "par"),
            "--n_process",
            "2",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    for stage in (1, 2, 3):
        name = f"stage{stage}/shard-00000-of-00001.jsonl.zst"
        assert (tmp_path / "par" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shard_idx", "3", "--num_shards", "3"], "--shard_idx must be in 0..2"),
        (["--stages", "3", "--num_keywords", "5", "2"], "--num_keywords needs 2 increasing positive counts"),
        (["--stages", "1"], "--stages must be >= 2"),
    ],
)
def test_cli_rejects_bad_flags(corpus, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        cascade.main(["--input", str(corpus), "--output_dir", str(tmp_path / "out"), *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def run_array_task(corpus, output_dir, task_id, task_min=0, task_max=1, task_count=2):
    """sbatch/cascade_preprocess.sbatch as Slurm runs one array task (the script reads only these variables)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    env.update(
        PYTHONPATH=str(SCRIPT.parents[1]),
        REPO_DIR=str(SCRIPT.parents[1]),
        VENV=sys.prefix,
        SLURM_ARRAY_TASK_ID=str(task_id),
        SLURM_ARRAY_TASK_MIN=str(task_min),
        SLURM_ARRAY_TASK_MAX=str(task_max),
        SLURM_ARRAY_TASK_COUNT=str(task_count),
    )
    return subprocess.run(
        [
            "bash",
            str(SCRIPT.parents[1] / "sbatch" / "cascade_preprocess.sbatch"),
            "--input",
            str(corpus),
            "--output_dir",
            str(output_dir),
            "--num_keywords",
            "3",
            "6",
        ],
        capture_output=True,
        text=True,
        env=env,
    )


def test_array_job_script_builds_one_shard_per_task(corpus, tmp_path):
    for task_id in (1, 2):  # an array numbered from 1: shard = task id - min
        assert run_array_task(corpus, tmp_path / "out", task_id, 1, 2).returncode == 0
    cascade.build_shard(str(corpus), tmp_path / "whole", num_keywords=[3, 6])
    cascade.merge_shards(tmp_path / "out")
    assert list(read_jsonl(tmp_path / "out" / "stage2.jsonl.zst")) == list(
        read_jsonl(tmp_path / "whole" / "stage2" / "shard-00000-of-00001.jsonl.zst")
    )
    rerun = run_array_task(corpus, tmp_path / "out", 1, 1, 2)
    assert "shard-00000-of-00002 already finished, nothing done" in rerun.stdout
    gapped = run_array_task(corpus, tmp_path / "gap", 0, 0, 4, 3)
    assert gapped.returncode == 2 and "contiguous range" in gapped.stderr
