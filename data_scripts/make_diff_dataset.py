"""Build a code-diff dataset from the history of a git repository, in CarperAI's diff format.

One record per (commit, changed text file) of the non-merge commits in --rev-range (default: all of HEAD):

    {"text": "<NME> path\\n<BEF> file before\\n<MSG> commit message\\n<DFF> diff", "commit": sha, "path": path}

The diff is git's unified diff of that file (hunks only, 3 lines of context, renames followed); a new file has an
empty <BEF>, a deleted one is listed under its old path. Skipped and counted in the summary: merge commits, binary
files (a NUL byte in the first 8000 bytes, git's own test), vendored or generated files (VENDORED_DIRS,
GENERATED_NAMES), files over --max_file_bytes, files that are not UTF-8, submodules and symlinks, changes with no
text hunk (pure renames, mode changes), and records whose context (path, file before, message) contains the
`<DFF>` marker, since training takes the first marker as the start of the target.

Commits go to shard `int(sha[:8], 16) % --num_shards`, so shards are disjoint and their union is the whole.
Each output `F.jsonl.zst` comes with `F.summary.json` (counts, shard, resolved range); `--merge` joins shard
files in shard order after checking that they come from one run and that every shard is there exactly once.
The same repository, range and flags always give byte-identical files, whatever --workers is.

    python data_scripts/make_diff_dataset.py --repo . --output outputs/diffs/self.jsonl.zst
    python data_scripts/make_diff_dataset.py --repo . --output outputs/diffs/s0.jsonl.zst --shard_idx 0 --num_shards 2
    python data_scripts/make_diff_dataset.py --repo . --output outputs/diffs/s1.jsonl.zst --shard_idx 1 --num_shards 2
    python data_scripts/make_diff_dataset.py --merge outputs/diffs/s0.jsonl.zst outputs/diffs/s1.jsonl.zst \\
        --output outputs/diffs/all.jsonl.zst
"""

import argparse
import contextlib
import json
import multiprocessing
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path, PurePosixPath

try:
    from diff_trainer.data.io import JSONL_SUFFIXES, atomic_text_writer, read_jsonl, write_jsonl
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.io import JSONL_SUFFIXES, atomic_text_writer, read_jsonl, write_jsonl

DFF = "<DFF>"
BINARY_PROBE_BYTES = 8000  # git's buffer_is_binary looks for a NUL in this many leading bytes
VENDORED_DIRS = frozenset(
    {
        "vendor",
        "vendored",
        "third_party",
        "thirdparty",
        "node_modules",
        "site-packages",
        "dist",
        "__pycache__",
        ".venv",
        "venv",
    }
)
GENERATED_NAMES = (
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "poetry.lock",
    "Cargo.lock",
    "go.sum",
    "Pipfile.lock",
    "composer.lock",
    "*.min.js",
    "*.min.css",
    "*.map",
    "*_pb2.py",
    "*_pb2_grpc.py",
    "*.pb.go",
    "*.pb.cc",
    "*.pb.h",
)
SUBMODULE_MODE, SYMLINK_MODE = "160000", "120000"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's hash of the empty tree: the parent of a root commit
# git's output must not depend on the user's configuration
GIT = (
    "git",
    "--literal-pathspecs",
    "-c",
    "core.quotepath=false",
    "-c",
    "diff.noprefix=false",
    "-c",
    "diff.mnemonicPrefix=false",
    "-c",
    "diff.relative=false",
    "-c",
    "diff.suppressBlankEmpty=false",
)
DIFF_OPTIONS = (
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--unified=3",
    "--inter-hunk-context=0",
    "--diff-algorithm=myers",
    "--indent-heuristic",
    "--find-renames=50%",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)
SKIP_REASONS = (
    "binary",
    "vendored_or_generated",
    "too_large",
    "not_utf8",
    "submodule_or_symlink",
    "no_text_change",
    "marker_in_context",
)


class GitError(RuntimeError):
    """A git command failed; the message holds the command and git's own error."""


def git(repo: str, *args: str, text: bool = True) -> str | bytes:
    result = subprocess.run([*GIT, "-C", repo, *args], capture_output=True)
    if result.returncode != 0:
        raise GitError(f"`git {' '.join(args)}` in {repo} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode("utf-8", errors="surrogateescape") if text else result.stdout


def check_repository(repo: str) -> None:
    """Raise GitError with a clear message when `repo` is not inside a git work tree or bare repository."""
    try:
        git(repo, "rev-parse", "--git-dir")
    except (GitError, FileNotFoundError, NotADirectoryError) as error:
        raise GitError(
            f"--repo {repo} is not a git repository (run `git init` there, or pass the repository root)"
        ) from error


def list_commits(repo: str, rev_range: str) -> tuple[list[str], int]:
    """The non-merge commits of `rev_range`, oldest first, and the number of merge commits skipped."""
    commits = git(repo, "rev-list", "--no-merges", "--topo-order", "--reverse", rev_range, "--").split()
    merges = int(git(repo, "rev-list", "--merges", "--count", rev_range, "--"))
    return commits, merges


def shard_of(commit: str, num_shards: int) -> int:
    return int(commit[:8], 16) % num_shards


def is_vendored_or_generated(path: str) -> bool:
    posix = PurePosixPath(path)
    return bool(VENDORED_DIRS.intersection(posix.parts[:-1])) or any(posix.match(name) for name in GENERATED_NAMES)


def changed_files(repo: str, parent: str, commit: str) -> list[tuple[str, str, str, str, str, str]]:
    """(old mode, new mode, old blob, new blob, old path, new path) per changed file, in git's path order."""
    fields = git(repo, "diff-tree", "-r", "-z", "--raw", "--no-commit-id", "--find-renames=50%", parent, commit).split(
        "\0"
    )
    entries, position = [], 0
    while position < len(fields) and fields[position]:
        old_mode, new_mode, old_blob, new_blob, status = fields[position].lstrip(":").split()
        paths = 2 if status[0] in "RC" else 1
        old_path, new_path = fields[position + 1], fields[position + paths]
        entries.append((old_mode, new_mode, old_blob, new_blob, old_path, new_path))
        position += 1 + paths
    return entries


def read_blob(repo: str, blob: str) -> bytes:
    return b"" if set(blob) == {"0"} else git(repo, "cat-file", "blob", blob, text=False)


def file_diff(repo: str, parent: str, commit: str, old_path: str, new_path: str) -> str:
    """git's unified diff of one file between `parent` and `commit`, from the first hunk header on."""
    patch = git(repo, "diff", *DIFF_OPTIONS, parent, commit, "--", *dict.fromkeys((old_path, new_path)))
    start = patch.find("\n@@ ")
    return "" if start < 0 else patch[start + 1 :]


def diff_record(path: str, before: str, message: str, diff: str) -> str:
    """CarperAI's diff format: everything before `<DFF>` is context, the diff is the target."""
    return f"<NME> {path}\n<BEF> {before}\n<MSG> {message}\n{DFF} {diff}"


def commit_records(commit: str, repo: str, max_file_bytes: int) -> tuple[list[dict[str, str]], Counter]:
    """The records of one commit, in path order, and the count of each skip reason."""
    skipped = Counter()
    parents = git(repo, "rev-list", "--parents", "-n", "1", commit).split()[1:]
    parent = parents[0] if parents else EMPTY_TREE
    message = git(repo, "log", "-1", "--format=%B", commit).strip()
    records = []
    for old_mode, new_mode, old_blob, new_blob, old_path, new_path in changed_files(repo, parent, commit):
        path = old_path if set(new_blob) == {"0"} else new_path
        if {old_mode, new_mode} & {SUBMODULE_MODE, SYMLINK_MODE}:
            skipped["submodule_or_symlink"] += 1
            continue
        if is_vendored_or_generated(old_path) or is_vendored_or_generated(new_path):
            skipped["vendored_or_generated"] += 1
            continue
        before_bytes, after_bytes = read_blob(repo, old_blob), read_blob(repo, new_blob)
        if b"\0" in before_bytes[:BINARY_PROBE_BYTES] or b"\0" in after_bytes[:BINARY_PROBE_BYTES]:
            skipped["binary"] += 1
            continue
        if max(len(before_bytes), len(after_bytes)) > max_file_bytes:
            skipped["too_large"] += 1
            continue
        try:
            before = before_bytes.decode("utf-8")
            after_bytes.decode("utf-8")
            path.encode("utf-8")
        except UnicodeError:
            skipped["not_utf8"] += 1
            continue
        diff = file_diff(repo, parent, commit, old_path, new_path)
        if not diff:
            skipped["no_text_change"] += 1
            continue
        if DFF in path or DFF in before or DFF in message:
            skipped["marker_in_context"] += 1
            continue
        records.append({"text": diff_record(path, before, message, diff), "commit": commit, "path": path})
    return records, skipped


def summary_path(output: str | Path) -> Path:
    """`d/F.jsonl.zst` -> `d/F.summary.json`."""
    output = Path(output)
    stem = next(
        output.name[: -len(suffix)]
        for suffix in sorted(JSONL_SUFFIXES, key=len, reverse=True)
        if output.name.endswith(suffix)
    )
    return output.with_name(f"{stem}.summary.json")


def write_summary(summary: dict, output: str | Path) -> None:
    with atomic_text_writer(summary_path(output)) as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
        handle.write("\n")


def make_diff_dataset(
    repo: str,
    output: str | Path,
    rev_range: str = "HEAD",
    max_file_bytes: int = 100_000,
    shard_idx: int = 0,
    num_shards: int = 1,
    workers: int = 1,
) -> dict:
    """Write this shard's records to `output` and its summary next to it; return the summary."""
    check_repository(repo)
    commits, merges = list_commits(repo, rev_range)
    mine = [commit for commit in commits if shard_of(commit, num_shards) == shard_idx]
    skipped = Counter({reason: 0 for reason in SKIP_REASONS})
    work = partial(commit_records, repo=repo, max_file_bytes=max_file_bytes)

    def records():
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers)) if workers > 1 else None
            for commit_output, commit_skipped in pool.imap(work, mine, chunksize=4) if pool else map(work, mine):
                skipped.update(commit_skipped)
                yield from commit_output

    count = write_jsonl(records(), output, total=None, description=f"shard {shard_idx}/{num_shards}")
    summary = {
        "repo_head": git(repo, "rev-parse", "HEAD").strip(),
        "rev_range": rev_range,
        "range_tip": git(repo, "rev-list", "-n", "1", rev_range, "--").strip(),
        "max_file_bytes": max_file_bytes,
        "shard_idx": shard_idx,
        "num_shards": num_shards,
        # merge commits are counted once, by shard 0, so that the shards' counts add up
        "commits": len(mine),
        "merge_commits_skipped": merges if shard_idx == 0 else 0,
        "records": count,
        "skipped": dict(sorted(skipped.items())),
    }
    write_summary(summary, output)
    return summary


def merge_shards(shard_files: list[str | Path], output: str | Path) -> dict:
    """Join shard files (with their summaries) into `output`, in shard order; return the merged summary.

    Raises ValueError naming the files when the shards come from different runs, overlap, or one is missing.
    """
    summaries = {}
    for shard_file in shard_files:
        path = summary_path(shard_file)
        if not Path(shard_file).is_file() or not path.is_file():
            raise ValueError(f"{shard_file}: shard file or its summary {path} is missing; re-run that shard")
        summaries[str(shard_file)] = json.loads(path.read_text(encoding="utf-8"))
    run_keys = ("rev_range", "range_tip", "max_file_bytes", "num_shards")
    runs = {tuple(summary[key] for key in run_keys) for summary in summaries.values()}
    if len(runs) > 1:
        detail = "; ".join(
            f"{name}: {', '.join(f'{key}={summary[key]}' for key in run_keys)}" for name, summary in summaries.items()
        )
        raise ValueError(f"shards come from different runs ({detail}); rebuild them with the same flags")
    num_shards = next(iter(runs))[-1]
    by_index = {}
    for name, summary in summaries.items():
        if summary["shard_idx"] in by_index:
            raise ValueError(
                f"overlapping shards: {by_index[summary['shard_idx']]} and {name} are both shard "
                f"{summary['shard_idx']}/{num_shards}"
            )
        by_index[summary["shard_idx"]] = name
    missing = sorted(set(range(num_shards)) - set(by_index))
    if missing:
        raise ValueError(f"missing shards {missing} of {num_shards}: build them with --shard_idx and pass all files")
    ordered = [by_index[index] for index in range(num_shards)]
    expected = sum(summary["records"] for summary in summaries.values())

    def checked_records():
        """The shards' records; raising before the end keeps the atomic writer from publishing the file."""
        count = 0
        for name in ordered:
            for record in read_jsonl(name):
                count += 1
                yield record
        if count != expected:
            raise ValueError(
                f"the shard files hold {count} records but their summaries say {expected}; re-run the shards"
            )

    count = write_jsonl(checked_records(), output, description=f"merging {num_shards} shards")
    first = summaries[ordered[0]]
    skipped = Counter()
    for summary in summaries.values():
        skipped.update(summary["skipped"])
    merged = {
        **{key: first[key] for key in ("repo_head", "rev_range", "range_tip", "max_file_bytes")},
        "shard_idx": 0,
        "num_shards": 1,
        "merged_from": ordered,
        "commits": sum(summary["commits"] for summary in summaries.values()),
        "merge_commits_skipped": sum(summary["merge_commits_skipped"] for summary in summaries.values()),
        "records": count,
        "skipped": {reason: skipped[reason] for reason in sorted(skipped)},
    }
    write_summary(merged, output)
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", help="path of the git repository to read (required unless --merge)")
    parser.add_argument("--output", required=True, help="output file, .jsonl.zst or .jsonl")
    parser.add_argument(
        "--rev-range",
        "--rev_range",
        dest="rev_range",
        default="HEAD",
        help="commits to read, as `git rev-list` takes them: A..B, a branch (default: %(default)s)",
    )
    parser.add_argument(
        "--max_file_bytes",
        type=int,
        default=100_000,
        help="skip a file whose before or after version is larger (default: %(default)s)",
    )
    parser.add_argument("--shard_idx", type=int, default=0, help="this shard's index, 0..num_shards-1")
    parser.add_argument("--num_shards", type=int, default=1, help="number of shards (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="processes reading commits (default: %(default)s)")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="SHARD",
        help="join these shard files (with their .summary.json) into --output instead",
    )
    args = parser.parse_args(argv)
    if not str(args.output).endswith(JSONL_SUFFIXES):
        parser.error(f"--output must end in {' or '.join(JSONL_SUFFIXES)}, got {args.output}")
    try:
        if args.merge:
            summary = merge_shards(args.merge, args.output)
        else:
            if args.repo is None:
                parser.error("--repo is required (or --merge SHARD... to join shard files)")
            if args.num_shards < 1 or not 0 <= args.shard_idx < args.num_shards:
                parser.error(
                    f"--shard_idx must be in 0..{args.num_shards - 1} and --num_shards >= 1, "
                    f"got --shard_idx {args.shard_idx} --num_shards {args.num_shards}"
                )
            if args.workers < 1 or args.max_file_bytes < 1:
                parser.error("--workers and --max_file_bytes must be >= 1")
            summary = make_diff_dataset(
                args.repo,
                args.output,
                args.rev_range,
                args.max_file_bytes,
                args.shard_idx,
                args.num_shards,
                args.workers,
            )
    except (GitError, ValueError) as error:
        parser.error(str(error))
    skips = ", ".join(f"{reason} {count}" for reason, count in summary["skipped"].items())
    print(
        f"{summary['records']} records from {summary['commits']} commits written to {args.output} "
        f"(skipped: merge commits {summary['merge_commits_skipped']}, {skips}); summary in "
        f"{summary_path(args.output)}"
    )


if __name__ == "__main__":
    main()
