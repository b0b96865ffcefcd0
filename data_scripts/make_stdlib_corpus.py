"""Build the bundled demo corpus: `signature<DFF>docstring summary` records from Python's own standard library.

Modules are read as source files and parsed with `ast` (nothing is imported), so the output depends only on the
Python version and the flags: the same interpreter always writes byte-identical files. Each public function,
method, property, class and module with a docstring becomes one record, for example

    def json.dumps(obj, *, skipkeys=False, ...)<DFF>Serialize ``obj`` to a JSON formatted ``str``.

The response is the first paragraph of the docstring, cut at a sentence boundary to fit `--max_response_chars`.
Records go to train or validation by a hash of their qualified name, so the split is stable when modules change.

    python data_scripts/make_stdlib_corpus.py --output_dir data/stdlib_docstrings
"""

import argparse
import ast
import hashlib
import json
import platform
import re
import shlex
import shutil
import sys
import sysconfig
import tokenize
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

try:
    from diff_trainer.data.io import write_jsonl
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diff_trainer.data.io import write_jsonl

DFF = "<DFF>"

DEFAULT_MODULES = (
    "abc",
    "argparse",
    "ast",
    "asyncio.base_events",
    "asyncio.events",
    "asyncio.locks",
    "asyncio.queues",
    "asyncio.streams",
    "asyncio.tasks",
    "base64",
    "bdb",
    "bisect",
    "bz2",
    "calendar",
    "cmd",
    "code",
    "codecs",
    "collections",
    "colorsys",
    "concurrent.futures.thread",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "difflib",
    "dis",
    "doctest",
    "email.charset",
    "email.header",
    "email.headerregistry",
    "email.message",
    "email.parser",
    "email.utils",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "genericpath",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "heapq",
    "hmac",
    "html",
    "html.parser",
    "http.client",
    "http.cookiejar",
    "http.cookies",
    "http.server",
    "imaplib",
    "importlib.abc",
    "importlib.metadata",
    "inspect",
    "ipaddress",
    "json",
    "json.decoder",
    "json.encoder",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "logging.handlers",
    "lzma",
    "mailbox",
    "mimetypes",
    "multiprocessing.pool",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "posixpath",
    "pprint",
    "pstats",
    "py_compile",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "runpy",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "statistics",
    "string",
    "subprocess",
    "symtable",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "turtle",
    "types",
    "typing",
    "unittest.case",
    "unittest.mock",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "xml.sax.saxutils",
    "zipfile",
    "zipimport",
)

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_CALL_START = re.compile(r"^[\w.]+\(")
_CALL_END = re.compile(r"\)(\s*->.*)?$")
_HEADING_UNDERLINE = re.compile(r"^([-=~^*#])\1{2,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(])")
_PROPERTY_DECORATORS = {"property", "functools.cached_property", "cached_property"}


@dataclass(frozen=True)
class DocRecord:
    """One corpus record: `name` is the qualified name (it decides the split), `text` is what gets trained."""

    name: str
    prompt: str
    response: str

    @property
    def text(self) -> str:
        return f"{self.prompt}{DFF}{self.response}"


def locate_module_source(module_name: str, stdlib_dir: str | None = None) -> Path:
    """Path of a pure-Python stdlib module's source (`a/b.py` or `a/b/__init__.py`), without importing it."""
    base = Path(stdlib_dir or sysconfig.get_paths()["stdlib"]).joinpath(*module_name.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no pure-Python source for stdlib module {module_name!r} under {base.parent}")


def _signature_line_count(lines: list[str]) -> int:
    """How many leading lines form a call signature like `reduce(function, iterable[, initial]) -> value`,
    possibly wrapped over several lines and followed by `-> result` lines; 0 if the text starts with prose."""
    if not lines or not _CALL_START.match(lines[0]):
        return 0
    depth, count = 0, 0
    for line in lines:
        depth += line.count("(") - line.count(")")
        count += 1
        if depth <= 0:
            break
    if not _CALL_END.search(lines[count - 1]):
        return 0
    while count < len(lines) and lines[count].startswith("->"):
        count += 1
    return count


def _description_lines(paragraph: str) -> list[str]:
    """The paragraph's lines up to any doctest example, without leading call signatures; nothing for a
    reStructuredText heading (a title over a line of `~~~`, `===` or `---`)."""
    lines = list(takewhile(lambda line: not line.startswith(">>>"), map(str.strip, paragraph.splitlines())))
    if any(_HEADING_UNDERLINE.match(line) for line in lines):
        return []
    while signature_lines := _signature_line_count(lines):
        lines = lines[signature_lines:]
    return lines


def summary_paragraph(docstring: str | None, max_chars: int) -> str | None:
    """The first descriptive docstring paragraph on one line, cut to whole sentences within `max_chars`.

    None when there is no such paragraph, when it is a single word, when it is a lead-in to a list (ends
    with a colon), or when even its first sentence is too long.
    """
    paragraph = ""
    for lines in map(_description_lines, _PARAGRAPH_BREAK.split(docstring.strip()) if docstring else []):
        if lines:
            paragraph = " ".join(" ".join(lines).split())
            break
    if len(paragraph.split()) < 2 or paragraph.endswith(":"):
        return None
    summary = ""
    for sentence in _SENTENCE_END.split(paragraph):
        candidate = f"{summary} {sentence}" if summary else sentence
        if len(candidate) > max_chars:
            break
        summary = candidate
    return summary or None


def _is_private(name: str) -> bool:
    return name.startswith("_")


def _function_prompt(node: ast.FunctionDef | ast.AsyncFunctionDef, qualified_name: str) -> str | None:
    """`def a.b(args) -> ret`, `async def ...` or `property a.b`; None for setters, deleters and overloads."""
    decorators = {ast.unparse(decorator) for decorator in node.decorator_list}
    if any(d.endswith((".setter", ".deleter")) or d in ("overload", "typing.overload") for d in decorators):
        return None
    if decorators & _PROPERTY_DECORATORS:
        return f"property {qualified_name}"
    keyword = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{keyword} {qualified_name}({ast.unparse(node.args)}){returns}"


def _class_prompt(node: ast.ClassDef, qualified_name: str) -> str:
    """`class a.B(Base, metaclass=M)` or `class a.B`."""
    bases = [ast.unparse(base) for base in node.bases] + [ast.unparse(keyword) for keyword in node.keywords]
    return f"class {qualified_name}({', '.join(bases)})" if bases else f"class {qualified_name}"


def _walk_definitions(body: list[ast.stmt], prefix: str, max_prompt_chars: int, max_response_chars: int):
    """Yield records for the public functions and classes of one body, recursing into class bodies."""
    for node in body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or _is_private(node.name):
            continue
        qualified_name = f"{prefix}.{node.name}"
        if isinstance(node, ast.ClassDef):
            prompt = _class_prompt(node, qualified_name)
        else:
            prompt = _function_prompt(node, qualified_name)
        response = summary_paragraph(ast.get_docstring(node), max_response_chars)
        if prompt and response and len(prompt) <= max_prompt_chars:
            yield DocRecord(qualified_name, prompt, response)
        if isinstance(node, ast.ClassDef):
            yield from _walk_definitions(node.body, qualified_name, max_prompt_chars, max_response_chars)


def records_from_source(
    source: str, module_name: str, max_prompt_chars: int = 200, max_response_chars: int = 300
) -> list[DocRecord]:
    """Records of one module's source text: the module docstring, then definitions in source order."""
    tree = ast.parse(source)
    records = []
    module_summary = summary_paragraph(ast.get_docstring(tree), max_response_chars)
    if module_summary:
        records.append(DocRecord(module_name, f"module {module_name}", module_summary))
    records.extend(_walk_definitions(tree.body, module_name, max_prompt_chars, max_response_chars))
    return records


def collect_records(
    modules: list[str], max_prompt_chars: int = 200, max_response_chars: int = 300, stdlib_dir: str | None = None
) -> list[DocRecord]:
    """Records of all `modules` in the given order, keeping the first of any repeated name or text."""
    records, seen_names, seen_texts = [], set(), set()
    for module_name in modules:
        with tokenize.open(locate_module_source(module_name, stdlib_dir)) as handle:
            source = handle.read()
        for record in records_from_source(source, module_name, max_prompt_chars, max_response_chars):
            if record.name in seen_names or record.text in seen_texts:
                continue
            seen_names.add(record.name)
            seen_texts.add(record.text)
            records.append(record)
    return records


def is_validation(name: str, validation_fraction: float) -> bool:
    """Deterministic split: the first 8 bytes of sha256(name) read as a fraction of 2**64."""
    position = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2**64
    return position < validation_fraction


def _readme(
    counts: dict[str, int],
    records: list[DocRecord],
    modules: list[str],
    command: str,
    max_prompt_chars: int,
    max_response_chars: int,
    validation_fraction: float,
) -> str:
    longest = max(len(record.text.encode("utf-8")) for record in records)
    step = max(1, len(records) // 4)
    examples = "\n".join(
        "    " + json.dumps({"text": record.text}, ensure_ascii=False) for record in records[step::step][:3]
    )
    return f"""# stdlib_docstrings: a tiny `prompt<DFF>response` corpus

A small, permissively licensed corpus for trying diff-trainer on a CPU in minutes. Each record pairs a
public signature from CPython's standard library (the prompt) with the first paragraph of its docstring
(the response), joined by `<DFF>`: the model learns to write the summary given the signature.

## Files

| file | records |
|---|---|
| `train.jsonl.zst` | {counts["train"]} |
| `validation.jsonl.zst` | {counts["validation"]} |

One JSON object per line with a single field `"text"` (zstandard-compressed JSON Lines, which
`datasets.load_dataset("json", data_files=...)` reads directly). A few records:

{examples}

Prompts take four forms: `def module.name(args)` (also `async def`), `property module.Class.name`,
`class module.Name(bases)` and `module name`. Prompts have at most {max_prompt_chars} characters and
responses at most {max_response_chars} (the summary is cut at a sentence boundary, and call signatures,
doctest examples and headings at the top of a docstring are passed over); the longest record is
{longest} bytes in UTF-8, so every record fits a 512-token block of a byte-level tokenizer.
A record goes to validation when the sha256 of its qualified name falls in the first
{validation_fraction:g} of the hash range, so the split is disjoint and stable.

## Provenance

Generated with Python {platform.python_version()} ({platform.python_implementation()}) by

    {command}

which parses the source files of these {len(modules)} modules with `ast` (nothing is imported), skips
private names, setters and overloads, and drops repeated names and texts:
{", ".join(modules)}.
Another Python version gives slightly different records; the same version gives identical files.

## Licence

The docstrings are part of CPython's standard library, distributed under the Python Software Foundation
License (PSF-2.0); this corpus is a derived work under the same licence. `LICENSE.txt` is the copy of the
licence shipped with the Python that generated the files.
"""


def write_corpus(
    output_dir: str | Path,
    modules: list[str],
    max_prompt_chars: int = 200,
    max_response_chars: int = 300,
    validation_fraction: float = 0.05,
    command: str = "python data_scripts/make_stdlib_corpus.py",
) -> dict[str, int]:
    """Write train/validation `.jsonl.zst`, README.md and LICENSE.txt into `output_dir`; return record counts."""
    records = collect_records(modules, max_prompt_chars, max_response_chars)
    if not records:
        raise ValueError(f"no records found in modules {modules}")
    splits = {"train": [], "validation": []}
    for record in records:
        splits["validation" if is_validation(record.name, validation_fraction) else "train"].append(record)
    output_dir = Path(output_dir)
    counts = {}
    for split, split_records in splits.items():
        counts[split] = write_jsonl(
            ({"text": record.text} for record in split_records),
            output_dir / f"{split}.jsonl.zst",
            total=len(split_records),
            description=f"writing {split}",
            zstd_level=19,
        )
    readme = _readme(counts, records, modules, command, max_prompt_chars, max_response_chars, validation_fraction)
    (output_dir / "README.md").write_text(readme, encoding="utf-8")
    licence = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if licence.is_file():
        shutil.copyfile(licence, output_dir / "LICENSE.txt")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="directory for the .jsonl.zst files and README.md")
    parser.add_argument(
        "--modules",
        nargs="+",
        default=list(DEFAULT_MODULES),
        help=f"pure-Python stdlib modules to read, in order (default: {len(DEFAULT_MODULES)} modules)",
    )
    parser.add_argument(
        "--max_response_chars",
        type=int,
        default=300,
        help="longest docstring summary kept, cut at a sentence boundary (default: %(default)s)",
    )
    parser.add_argument(
        "--max_prompt_chars",
        type=int,
        default=200,
        help="records with a longer signature are skipped (default: %(default)s)",
    )
    parser.add_argument(
        "--validation_fraction",
        type=float,
        default=0.05,
        help="share of names hashed into validation (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.validation_fraction <= 1.0:
        parser.error("--validation_fraction must be between 0 and 1")
    command = shlex.join(["python", "data_scripts/make_stdlib_corpus.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        counts = write_corpus(
            args.output_dir,
            args.modules,
            args.max_prompt_chars,
            args.max_response_chars,
            args.validation_fraction,
            command,
        )
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(f"wrote {counts['train']} train and {counts['validation']} validation records to {args.output_dir}")


if __name__ == "__main__":
    main()
