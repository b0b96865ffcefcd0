"""README.md, followed as a newcomer would: every ```bash block, in order, on a fresh copy of the repository.

The copy holds the files git tracks (plus untracked, not ignored ones), like a fresh clone. Each block runs with
`bash -e` from the copy's root, with this Python's environment first on PATH and the copy on PYTHONPATH, so
`python` and the console scripts run the copied code. An HTML comment just before a block (one per line) says how
it runs here; the README reader does not see it:

    <!-- test: skip REASON -->              not run here (REASON is required: e.g. the environment is this one)
    <!-- test: replace OLD => NEW -->        run with the text OLD replaced by NEW (shorter training); OLD must occur
    <!-- test: produces PATH ... -->        these paths must exist after the block (what the README says it makes)

Marked `readme` (a few minutes on 2 cores): deselect with `-m "not readme"` for a quick run.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from repo_copy import copy_repository

REPO = Path(__file__).resolve().parents[1]
BLOCK_TIMEOUT = 1800  # a block takes well under a minute on an idle 2-core machine; this is for a shared one
README_EXTRAS = ("lm_eval", "onnx", "onnxscript", "onnxruntime")  # diff-lm-eval and diff-export-onnx blocks
DIRECTIVE = re.compile(r"^<!--\s*test:\s*(skip|replace|produces)\b(.*?)-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    """One ```bash block of the README and how the test runs it."""

    line: int  # 1-based line of the opening fence
    script: str
    skip: str | None = None
    replacements: list[tuple[str, str]] = field(default_factory=list)
    produces: list[str] = field(default_factory=list)

    def runnable_script(self) -> str:
        script = self.script
        for old, new in self.replacements:
            if old not in script:
                raise ValueError(f"README.md line {self.line}: 'test: replace' text {old!r} is not in the block.")
            script = script.replace(old, new)
        return script


def readme_blocks(text: str) -> list[Block]:
    """The bash blocks of a markdown text with the test directives of the comment lines just above each."""
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
                raise ValueError(f"README.md line {index + 1}: code block is never closed.")
            if fence.group(1) in ("bash", "sh"):
                blocks.append(_block(index + 1, "\n".join(lines[index + 1:end]) + "\n", directives))
            elif directives:
                raise ValueError(f"README.md line {index + 1}: test directives above a non-bash block.")
            directives = []
            index = end
        elif line.strip() and directives:
            raise ValueError(f"README.md line {directives[0][0]}: a test directive must sit right above its block.")
        index += 1
    return blocks


def _block(line: int, script: str, directives: list[tuple[int, str, str]]) -> Block:
    block = Block(line, script)
    for directive_line, kind, argument in directives:
        if kind == "skip":
            if not argument:
                raise ValueError(f"README.md line {directive_line}: 'test: skip' needs a reason.")
            block.skip = argument
        elif kind == "replace":
            old, arrow, new = argument.partition(" => ")
            if not arrow or not old:
                raise ValueError(f"README.md line {directive_line}: write 'test: replace OLD => NEW'.")
            block.replacements.append((old, new))
        else:
            block.produces += argument.split()
    return block


def test_directives_are_read_and_applied():
    text = "\n".join([
        "intro", "<!-- test: skip needs a cluster -->", "```bash", "sbatch x", "```",
        "<!-- test: replace --max_steps 300 => --max_steps 2 -->", "<!-- test: produces out/a out/b -->",
        "```bash", "python run.py --max_steps 300", "```", "```text", "not a command", "```", "```bash", "ls", "```",
    ])
    skipped, shortened, plain = readme_blocks(text)
    assert (skipped.line, skipped.skip, skipped.script) == (3, "needs a cluster", "sbatch x\n")
    assert shortened.runnable_script() == "python run.py --max_steps 2\n"
    assert shortened.produces == ["out/a", "out/b"] and (plain.skip, plain.replacements) == (None, [])
    with pytest.raises(ValueError, match="line 1: 'test: replace' text '--steps 3' is not in the block"):
        Block(1, "python run.py\n", replacements=[("--steps 3", "--steps 1")]).runnable_script()
    with pytest.raises(ValueError, match="line 1: 'test: skip' needs a reason"):
        readme_blocks("<!-- test: skip -->\n```bash\nls\n```")
    with pytest.raises(ValueError, match="right above its block"):
        readme_blocks("<!-- test: skip later -->\nsome text\n```bash\nls\n```")


@pytest.mark.readme
@pytest.mark.timeout(7200)
def test_readme_commands_run_in_order_on_a_fresh_copy(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to make a fresh copy")
    missing = [module for module in README_EXTRAS if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"README's commands use the optional extras ({', '.join(missing)} missing): "
                    "pip install -e '.[web,data,eval]'")
    blocks = readme_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    copy = copy_repository(tmp_path / "repo")
    environment = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                   "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    ran = 0
    for block in blocks:
        if block.skip:
            continue
        try:
            result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.runnable_script()], cwd=copy,
                                    env=environment, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"README.md block at line {block.line} ran longer than {BLOCK_TIMEOUT} s:\n{block.script}")
        output = (result.stdout + result.stderr)[-4000:]
        assert result.returncode == 0, f"README.md block at line {block.line} failed:\n{block.script}\n{output}"
        missing = [path for path in block.produces if not (copy / path).exists()]
        assert not missing, f"README.md block at line {block.line} did not produce {missing}:\n{output}"
        ran += 1
    assert ran >= 8, "README.md has lost most of its runnable command blocks"
