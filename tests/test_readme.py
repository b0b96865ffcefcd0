"""README.md and the guides in docs/, followed as a newcomer would: every ```bash block, in order, on a fresh copy.

The README runs first, then each guide in the order of `GUIDES` (the order of the README's table of guides; a guide
may use what an earlier one made). A guide in docs/ with bash blocks that `GUIDES` does not list is an error, so no
guide goes untested. The copy holds the files git tracks (plus untracked, not ignored ones), like a fresh clone. Each
block runs with
`bash -e` from the copy's root, with this Python's environment first on PATH and the copy on PYTHONPATH, so
`python` and the console scripts run the copied code. An HTML comment just before a block (one per line) says how
it runs here; the reader of the rendered markdown does not see it:

    <!-- test: skip REASON -->              not run here (REASON is required: e.g. the environment is this one)
    <!-- test: replace OLD => NEW -->        run with the text OLD replaced by NEW (shorter training); OLD must occur
    <!-- test: produces PATH ... -->        these paths must exist after the block (what the text says it makes)

Marked `readme` (a few minutes on 2 cores): deselect with `-m "not readme"` for a quick run.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from repo_copy import copy_repository

REPO = Path(__file__).resolve().parents[1]
# the guides whose commands run after the README's, in the order of the README's table of guides
# a benchmark run replaces its own table in benchmarks/results/ (the figures the docs link to): not a clobber
REWRITTEN_BY_DESIGN = "benchmarks/results/"

GUIDES = [
    "docs/sampling.md",
    "docs/arithmetic.md",
    "docs/training.md",
    "docs/data-pipeline.md",
    "docs/chat.md",
    "docs/dpo.md",
    "docs/grpo.md",
    "docs/sedd.md",
    "docs/block-diffusion.md",
    "docs/harness.md",
    "docs/browser.md",
    "docs/llada-dream.md",
    "docs/scaling.md",
    "docs/slurm.md",
    "docs/data-builders.md",
    "docs/cascade.md",
    "docs/benchmarks.md",
    "docs/tests.md",
    "docs/what-happens-when.md",
    "docs/architecture.md",
]
BLOCK_TIMEOUT = 1800  # a block takes well under a minute on an idle 2-core machine; this is for a shared one
README_EXTRAS = ("lm_eval", "onnx", "onnxscript", "onnxruntime")  # diff-lm-eval and diff-export-onnx blocks
DIRECTIVE = re.compile(r"^<!--\s*test:\s*(skip|replace|produces)\b(.*?)-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    """One ```bash block of a markdown file and how the test runs it."""

    source: str  # the markdown file, relative to the repository root
    line: int  # 1-based line of the opening fence
    script: str
    skip: str | None = None
    replacements: list[tuple[str, str]] = field(default_factory=list)
    produces: list[str] = field(default_factory=list)

    def runnable_script(self) -> str:
        script = self.script
        for old, new in self.replacements:
            if old not in script:
                raise ValueError(f"{self.source} line {self.line}: 'test: replace' text {old!r} is not in the block.")
            script = script.replace(old, new)
        return script


def readme_blocks(text: str, source: str = "README.md") -> list[Block]:
    """The bash blocks of the markdown text of `source` with the test directives of the comment lines above each."""
    blocks, directives = [], []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = DIRECTIVE.match(line.strip())
        fence = FENCE.match(line)
        if directive:
            directives.append((index + 1, directive.group(1), directive.group(2).strip()))
        elif fence:
            end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), None)
            if end is None:
                raise ValueError(f"{source} line {index + 1}: code block is never closed.")
            if fence.group(1) in ("bash", "sh"):
                blocks.append(_block(source, index + 1, "\n".join(lines[index + 1 : end]) + "\n", directives))
            elif directives:
                raise ValueError(f"{source} line {index + 1}: test directives above a non-bash block.")
            directives = []
            index = end
        elif line.strip() and directives:
            raise ValueError(f"{source} line {directives[0][0]}: a test directive must sit right above its block.")
        index += 1
    return blocks


def _block(source: str, line: int, script: str, directives: list[tuple[int, str, str]]) -> Block:
    block = Block(source, line, script)
    for directive_line, kind, argument in directives:
        if kind == "skip":
            if not argument:
                raise ValueError(f"{source} line {directive_line}: 'test: skip' needs a reason.")
            block.skip = argument
        elif kind == "replace":
            old, arrow, new = argument.partition(" => ")
            if not arrow or not old:
                raise ValueError(f"{source} line {directive_line}: write 'test: replace OLD => NEW'.")
            block.replacements.append((old, new))
        else:
            block.produces += argument.split()
    return block


def test_directives_are_read_and_applied():
    text = "\n".join(
        [
            "intro",
            "<!-- test: skip needs a cluster -->",
            "```bash",
            "sbatch x",
            "```",
            "<!-- test: replace --max_steps 300 => --max_steps 2 -->",
            "<!-- test: produces out/a out/b -->",
            "```bash",
            "python run.py --max_steps 300",
            "```",
            "```text",
            "not a command",
            "```",
            "```bash",
            "ls",
            "```",
        ]
    )
    skipped, shortened, plain = readme_blocks(text)
    assert (skipped.line, skipped.skip, skipped.script) == (3, "needs a cluster", "sbatch x\n")
    assert shortened.runnable_script() == "python run.py --max_steps 2\n"
    assert shortened.produces == ["out/a", "out/b"] and (plain.skip, plain.replacements) == (None, [])
    with pytest.raises(ValueError, match="README.md line 1: 'test: replace' text '--steps 3' is not in the block"):
        Block("README.md", 1, "python run.py\n", replacements=[("--steps 3", "--steps 1")]).runnable_script()
    with pytest.raises(ValueError, match="docs/x.md line 1: 'test: skip' needs a reason"):
        readme_blocks("<!-- test: skip -->\n```bash\nls\n```", "docs/x.md")
    with pytest.raises(ValueError, match="right above its block"):
        readme_blocks("<!-- test: skip later -->\nsome text\n```bash\nls\n```")


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` (git's own directory and bytecode caches aside) with its modification time and size."""
    files = {}
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in (".git", "__pycache__")]
        for name in names:
            path = Path(directory, name)
            status = path.lstat()
            files[str(path.relative_to(root))] = (status.st_mtime_ns, status.st_size)
    return files


def documented_blocks(root: Path) -> list[Block]:
    """The README's blocks, then each guide's in the order of `GUIDES`; an unlisted guide with commands is an error."""
    missing = [name for name in GUIDES if not (root / name).is_file()]
    if missing:
        raise ValueError(f"tests/test_readme.py GUIDES names {missing}, which do not exist: remove or restore them.")
    blocks = readme_blocks((root / "README.md").read_text(encoding="utf-8"))
    for name in GUIDES:
        blocks += readme_blocks((root / name).read_text(encoding="utf-8"), name)
    for path in sorted((root / "docs").glob("*.md")):
        name = str(path.relative_to(root))
        if name not in GUIDES and readme_blocks(path.read_text(encoding="utf-8"), name):
            raise ValueError(
                f"{name} has bash blocks but is not in GUIDES of tests/test_readme.py: add it where its "
                "commands can run (after the guides whose outputs it uses) and link it from README.md."
            )
    return blocks


def test_every_guide_is_listed_and_linked_in_the_readme_in_order():
    documented_blocks(REPO)  # raises for a guide with commands that GUIDES leaves out
    table = [line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    linked = list(dict.fromkeys(re.findall(r"\]\((docs/[\w.-]+\.md)\)", "\n".join(table))))
    assert linked == GUIDES, "README.md's table of guides and GUIDES in tests/test_readme.py must list the same order"


def test_an_unlisted_guide_with_commands_is_an_error(tmp_path):
    for name in ["README.md", *GUIDES]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text\n")
    (tmp_path / "docs/notes.md").write_text("no commands\n")
    assert documented_blocks(tmp_path) == []
    (tmp_path / "docs/new.md").write_text("```bash\nls\n```\n")
    with pytest.raises(ValueError, match="docs/new.md has bash blocks but is not in GUIDES"):
        documented_blocks(tmp_path)
    (tmp_path / GUIDES[0]).unlink()
    with pytest.raises(ValueError, match=f"GUIDES names \\['{GUIDES[0]}'\\], which do not exist"):
        documented_blocks(tmp_path)


@pytest.mark.readme
@pytest.mark.long
@pytest.mark.timeout(7200)
def test_readme_and_guides_run_in_order_on_a_fresh_copy(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to make a fresh copy")
    missing = [module for module in README_EXTRAS if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(
            f"README's commands use the optional extras ({', '.join(missing)} missing): "
            "pip install -e '.[web,data,eval]'"
        )
    copy = copy_repository(tmp_path / "repo")
    blocks = documented_blocks(copy)
    environment = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "PYTHONPATH": str(copy),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    ran = 0
    for block in blocks:
        if block.skip:
            continue
        where = f"{block.source} block at line {block.line}"
        before = _files(copy)
        started = time.monotonic()
        try:
            result = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", block.runnable_script()],
                cwd=copy,
                env=environment,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{where} ran longer than {BLOCK_TIMEOUT} s:\n{block.script}")
        print(f"{time.monotonic() - started:7.1f} s  {where}")  # shown with -s: where the test's minutes go
        output = (result.stdout + result.stderr)[-4000:]
        assert result.returncode == 0, f"{where} failed:\n{block.script}\n{output}"
        missing = [path for path in block.produces if not (copy / path).exists()]
        assert not missing, f"{where} did not produce {missing}:\n{output}"
        after = _files(copy)
        clobbered = sorted(
            path
            for path, stamp in before.items()
            if after.get(path) != stamp and not path.startswith(REWRITTEN_BY_DESIGN)
        )
        assert not clobbered, f"{where} changed or removed files that were there before it: {clobbered[:10]}"
        ran += 1
    assert ran >= 20, "README.md and its guides have lost runnable command blocks"
