"""data_scripts/make_diff_dataset.py on a real git repository built here: exact records, skips, shards, merge."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diff_trainer.data.io import read_jsonl

SCRIPT = Path(__file__).resolve().parents[2] / "data_scripts" / "make_diff_dataset.py"
_spec = importlib.util.spec_from_file_location("make_diff_dataset", SCRIPT)
diffs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diffs)

NOTES = "".join(f"line {number}\n" for number in range(1, 11))
MAX_BYTES = 100


def run_git(repo, *args, date="2026-01-01T00:00:00"):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "T",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "T",
        "GIT_COMMITTER_EMAIL": "t@e",
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_DATE": date,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_SYSTEM": os.devnull,
    }
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def commit(repo, message, day):
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "--allow-empty-message", "-m", message, date=f"2026-01-{day:02d}T00:00:00")
    return run_git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Seven commits and a merge covering every kind of change and every skip; returns (path, commit shas)."""
    root = tmp_path_factory.mktemp("repo")
    run_git(root, "init", "-q", "-b", "main")
    (root / "a.py").write_text("x = 1\n")
    (root / "b.txt").write_text("same content here\n")
    (root / "notes.txt").write_text(NOTES)
    (root / "logo.bin").write_bytes(b"\x89PNG\x00\x00\x01")
    (root / "vendor").mkdir()
    (root / "vendor" / "lib.py").write_text("v = 0\n")
    os.symlink("a.py", root / "link")
    shas = {"add": commit(root, "Add files", 1)}
    (root / "a.py").write_text("x = 1\ny = 2\n")
    (root / "latin.txt").write_bytes(b"caf\xe9\n")
    shas["empty"] = commit(root, "", 2)
    run_git(root, "mv", "b.txt", "c.txt")
    (root / "docs").mkdir()
    run_git(root, "mv", "notes.txt", "docs/notes.txt")
    (root / "docs" / "notes.txt").write_text(NOTES + "line 11\n")
    shas["move"] = commit(root, "Move notes\n\nWith a body.", 3)
    run_git(root, "rm", "-q", "a.py")
    shas["remove"] = commit(root, "Remove a", 4)
    (root / "docs" / "notes.txt").write_text(NOTES)
    shas["marker"] = commit(root, "Use <DFF> marker", 5)
    (root / "big.txt").write_text("b" * (MAX_BYTES + 1))
    shas["big"] = commit(root, "Big", 6)
    run_git(root, "checkout", "-q", "-b", "side")
    (root / "side.txt").write_text("s\n")
    shas["side"] = commit(root, "Side", 7)
    run_git(root, "checkout", "-q", "main")
    run_git(root, "merge", "-q", "--no-ff", "-m", "Merge side", "side", date="2026-01-08T00:00:00")
    return root, shas


def expected_records(shas):
    """The records written by hand from the history in `repo`."""
    added_notes = "@@ -0,0 +1,10 @@\n" + "".join(f"+line {number}\n" for number in range(1, 11))
    rows = [
        ("add", "a.py", "", "Add files", "@@ -0,0 +1 @@\n+x = 1\n"),
        ("add", "b.txt", "", "Add files", "@@ -0,0 +1 @@\n+same content here\n"),
        ("add", "notes.txt", "", "Add files", added_notes),
        ("empty", "a.py", "x = 1\n", "", "@@ -1 +1,2 @@\n x = 1\n+y = 2\n"),
        (
            "move",
            "docs/notes.txt",
            NOTES,
            "Move notes\n\nWith a body.",
            "@@ -8,3 +8,4 @@ line 7\n line 8\n line 9\n line 10\n+line 11\n",
        ),
        ("remove", "a.py", "x = 1\ny = 2\n", "Remove a", "@@ -1,2 +0,0 @@\n-x = 1\n-y = 2\n"),
        ("side", "side.txt", "", "Side", "@@ -0,0 +1 @@\n+s\n"),
    ]
    return [
        {"text": f"<NME> {path}\n<BEF> {before}\n<MSG> {message}\n<DFF> {diff}", "commit": shas[name], "path": path}
        for name, path, before, message, diff in rows
    ]


def test_records_and_skips_match_the_history(repo, tmp_path):
    root, shas = repo
    summary = diffs.make_diff_dataset(str(root), tmp_path / "all.jsonl.zst", max_file_bytes=MAX_BYTES)
    assert list(read_jsonl(tmp_path / "all.jsonl.zst")) == expected_records(shas)
    assert summary["skipped"] == {
        "binary": 1,
        "vendored_or_generated": 1,
        "too_large": 1,
        "not_utf8": 1,
        "submodule_or_symlink": 1,
        "no_text_change": 1,
        "marker_in_context": 1,
    }
    assert (summary["commits"], summary["merge_commits_skipped"], summary["records"]) == (7, 1, 7)
    assert diffs.summary_path(tmp_path / "all.jsonl.zst").is_file()


def test_rev_range_limits_the_commits(repo, tmp_path):
    root, shas = repo
    diffs.make_diff_dataset(
        str(root), tmp_path / "late.jsonl", rev_range=f"{shas['move']}..main", max_file_bytes=MAX_BYTES
    )
    assert [(record["commit"], record["path"]) for record in read_jsonl(tmp_path / "late.jsonl")] == [
        (shas["remove"], "a.py"),
        (shas["side"], "side.txt"),
    ]


def test_cli_with_workers_writes_identical_bytes(repo, tmp_path):
    root, _ = repo
    diffs.make_diff_dataset(str(root), tmp_path / "serial.jsonl.zst", max_file_bytes=MAX_BYTES)
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--repo",
            str(root),
            "--output",
            str(tmp_path / "par.jsonl.zst"),
            "--max_file_bytes",
            str(MAX_BYTES),
            "--workers",
            "2",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    assert (tmp_path / "par.jsonl.zst").read_bytes() == (tmp_path / "serial.jsonl.zst").read_bytes()


def build_shards(root, directory, num_shards):
    paths = [directory / f"s{index}.jsonl.zst" for index in range(num_shards)]
    for index, path in enumerate(paths):
        diffs.make_diff_dataset(str(root), path, max_file_bytes=MAX_BYTES, shard_idx=index, num_shards=num_shards)
    return paths


def test_shards_are_disjoint_and_merge_to_the_whole(repo, tmp_path):
    root, shas = repo
    paths = build_shards(root, tmp_path, 3)
    for index, path in enumerate(paths):
        assert all(int(record["commit"][:8], 16) % 3 == index for record in read_jsonl(path))
    merged = diffs.merge_shards(list(reversed(paths)), tmp_path / "merged.jsonl.zst")
    whole = expected_records(shas)
    in_shard_order = [record for index in range(3) for record in whole if int(record["commit"][:8], 16) % 3 == index]
    assert list(read_jsonl(tmp_path / "merged.jsonl.zst")) == in_shard_order
    assert (merged["commits"], merged["merge_commits_skipped"], merged["records"]) == (7, 1, 7)
    assert merged["skipped"]["binary"] == 1 and merged["skipped"]["no_text_change"] == 1


def test_merge_refuses_overlapping_missing_and_mixed_shards(repo, tmp_path):
    root, _ = repo
    paths = build_shards(root, tmp_path, 2)
    diffs.make_diff_dataset(str(root), tmp_path / "again0.jsonl.zst", max_file_bytes=MAX_BYTES, num_shards=2)
    diffs.make_diff_dataset(str(root), tmp_path / "three.jsonl.zst", max_file_bytes=MAX_BYTES, num_shards=3)
    with pytest.raises(ValueError, match=r"overlapping shards: .*s0.jsonl.zst and .*again0.jsonl.zst"):
        diffs.merge_shards([*paths, tmp_path / "again0.jsonl.zst"], tmp_path / "m.jsonl.zst")
    with pytest.raises(ValueError, match=r"missing shards \[1\] of 2"):
        diffs.merge_shards(paths[:1], tmp_path / "m.jsonl.zst")
    with pytest.raises(ValueError, match="different runs"):
        diffs.merge_shards([paths[1], tmp_path / "three.jsonl.zst"], tmp_path / "m.jsonl.zst")
    summary_file = diffs.summary_path(paths[1])
    summary = json.loads(summary_file.read_text())
    summary_file.write_text(json.dumps({**summary, "records": summary["records"] + 1}))
    with pytest.raises(ValueError, match=r"hold \d+ records but their summaries say"):
        diffs.merge_shards(paths, tmp_path / "m.jsonl.zst")
    summary_file.unlink()
    with pytest.raises(ValueError, match="s1.jsonl.zst: shard file or its summary"):
        diffs.merge_shards(paths, tmp_path / "m.jsonl.zst")
    assert not (tmp_path / "m.jsonl.zst").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shard_idx", "2", "--num_shards", "2"], "--shard_idx must be in 0..1"),
        (["--rev-range", "nosuchbranch"], "rev-list"),
    ],
)
def test_cli_rejects_bad_flags(repo, tmp_path, capsys, flags, message):
    root, _ = repo
    with pytest.raises(SystemExit):
        diffs.main(["--repo", str(root), "--output", str(tmp_path / "x.jsonl.zst"), *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl.zst").exists()


def test_cli_rejects_a_directory_that_is_not_a_repository(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    with pytest.raises(SystemExit):
        diffs.main(["--repo", str(tmp_path / "plain"), "--output", str(tmp_path / "x.jsonl.zst")])
    assert "is not a git repository" in capsys.readouterr().err
