"""data_scripts/make_stdlib_corpus.py: record shape, determinism, a disjoint split, and the bundled corpus."""

import importlib.util
from pathlib import Path

import pytest

from diff_trainer.data.io import read_jsonl

SCRIPT = Path(__file__).resolve().parents[2] / "data_scripts" / "make_stdlib_corpus.py"
BUNDLED = SCRIPT.parents[1] / "data" / "stdlib_docstrings"
_spec = importlib.util.spec_from_file_location("make_stdlib_corpus", SCRIPT)
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

MODULES = ["textwrap", "fnmatch"]
PROMPT_KINDS = ("def ", "async def ", "class ", "property ", "module ")

SOURCE = '''"""A made-up module.

Second paragraph, never used."""

def visible(a, b=2, *args, key: int = 0, **kw) -> str:
    """Do a visible thing.
    Over two lines."""

def _hidden():
    """Private, skipped."""

def undocumented():
    pass

async def fetch(url):
    """Fetch it."""

class Box(Base, metaclass=Meta):
    """A box."""

    def __init__(self):
        """Dunder, skipped."""

    @property
    def size(self):
        """The size."""

    @size.setter
    def size(self, value):
        """Setter, skipped."""

    class Lid:
        """A lid."""

        def open(self):
            """Open the lid."""
'''


def prompt_name(text):
    """`def a.b(x)<DFF>...` -> `a.b`."""
    prompt = text.split("<DFF>")[0]
    for kind in PROMPT_KINDS:
        if prompt.startswith(kind):
            return prompt[len(kind) :].split("(")[0]
    raise AssertionError(f"unexpected prompt {prompt!r}")


def test_records_from_source_by_hand():
    records = corpus.records_from_source(SOURCE, "made")
    assert [(r.name, r.prompt, r.response) for r in records] == [
        ("made", "module made", "A made-up module."),
        (
            "made.visible",
            "def made.visible(a, b=2, *args, key: int=0, **kw) -> str",
            "Do a visible thing. Over two lines.",
        ),
        ("made.fetch", "async def made.fetch(url)", "Fetch it."),
        ("made.Box", "class made.Box(Base, metaclass=Meta)", "A box."),
        ("made.Box.size", "property made.Box.size", "The size."),
        ("made.Box.Lid", "class made.Box.Lid", "A lid."),
        ("made.Box.Lid.open", "def made.Box.Lid.open(self)", "Open the lid."),
    ]
    assert records[2].text == "async def made.fetch(url)<DFF>Fetch it."
    short_prompts = corpus.records_from_source(SOURCE, "made", max_prompt_chars=30)
    assert "made.visible" not in {r.name for r in short_prompts} and "made.fetch" in {r.name for r in short_prompts}


def test_summary_paragraph_keeps_whole_sentences_within_the_limit():
    doc = "First sentence here. Second one is\n    wrapped. Third.\n\nIgnored paragraph."
    assert corpus.summary_paragraph(doc, 100) == "First sentence here. Second one is wrapped. Third."
    assert corpus.summary_paragraph(doc, 45) == "First sentence here. Second one is wrapped."
    assert corpus.summary_paragraph(doc, 20) == "First sentence here."
    assert corpus.summary_paragraph(doc, 19) is None
    assert corpus.summary_paragraph("Returns one of:\n\n- a\n- b", 100) is None
    assert corpus.summary_paragraph(None, 100) is None
    assert corpus.summary_paragraph("days", 100) is None


def test_summary_paragraph_skips_signature_lines_and_headings():
    assert corpus.summary_paragraph("reduce(f, xs[, init]) -> value\n\nFold xs with f.", 100) == "Fold xs with f."
    assert corpus.summary_paragraph("od.copy() -> a copy\nMakes a shallow copy.", 100) == "Makes a shallow copy."
    assert corpus.summary_paragraph("ast\n~~~\n\nThe ast module helps.", 100) == "The ast module helps."
    assert corpus.summary_paragraph("error(message: string)", 100) is None
    wrapped = "parse(args = sys.argv[1:],\n      values = None)\n-> (values, args)\n\nParse the command line."
    assert corpus.summary_paragraph(wrapped, 100) == "Parse the command line."
    assert corpus.summary_paragraph("len(x) is the size of x.", 100) == "len(x) is the size of x."
    assert corpus.summary_paragraph(">>> f(1)\n2\n\nCompute f.", 100) == "Compute f."
    assert corpus.summary_paragraph("Compute f, like so.\n>>> f(1)\n2", 100) == "Compute f, like so."


def test_validation_split_is_deterministic_and_proportional():
    names = [f"module.function_{i}" for i in range(4000)]
    share = sum(corpus.is_validation(name, 0.25) for name in names) / len(names)
    assert abs(share - 0.25) < 0.03  # ~4.3 standard deviations
    assert [corpus.is_validation(n, 0.25) for n in names[:50]] == [corpus.is_validation(n, 0.25) for n in names[:50]]
    assert not any(corpus.is_validation(name, 0.0) for name in names)
    assert all(corpus.is_validation(name, 1.0) for name in names)


def test_locate_module_source():
    assert corpus.locate_module_source("json").name == "__init__.py"
    assert corpus.locate_module_source("json.decoder").name == "decoder.py"
    with pytest.raises(FileNotFoundError, match="no_such_module"):
        corpus.locate_module_source("no_such_module")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    directories = [tmp_path_factory.mktemp(f"run{i}") for i in range(2)]
    counts = [corpus.write_corpus(d, MODULES, max_response_chars=120, validation_fraction=0.3) for d in directories]
    return directories, counts


def test_generated_records_have_the_promised_shape(two_runs):
    (directory, _), (counts, _) = two_runs
    for split in ("train", "validation"):
        records = list(read_jsonl(directory / f"{split}.jsonl.zst"))
        assert len(records) == counts[split] > 0
        for record in records:
            assert list(record) == ["text"]
            prompt, response = record["text"].split("<DFF>")  # exactly one separator
            assert prompt.startswith(PROMPT_KINDS) and prompt_name(record["text"]).split(".")[0] in MODULES
            assert 0 < len(response) <= 120 and "\n" not in response
            assert not any(part.startswith("_") for part in prompt_name(record["text"]).split("."))
    assert "PSF" in (directory / "README.md").read_text(encoding="utf-8")
    assert (directory / "LICENSE.txt").is_file()


def test_generation_is_deterministic(two_runs):
    (first, second), (first_counts, second_counts) = two_runs
    assert first_counts == second_counts
    for name in ("train.jsonl.zst", "validation.jsonl.zst", "README.md"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_split_is_disjoint_and_covers_every_record(two_runs):
    (directory, _), _ = two_runs
    names = {
        split: [prompt_name(r["text"]) for r in read_jsonl(directory / f"{split}.jsonl.zst")]
        for split in ("train", "validation")
    }
    assert not set(names["train"]) & set(names["validation"])
    expected = [r.name for r in corpus.collect_records(MODULES, max_response_chars=120)]
    assert sorted(names["train"] + names["validation"]) == sorted(expected)
    assert len(expected) == len(set(expected))


def test_command_line_rejects_an_unknown_module(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        corpus.main(["--output_dir", str(tmp_path), "--modules", "nosuchmod"])
    assert exit_info.value.code == 2 and "nosuchmod" in capsys.readouterr().err
    assert not (tmp_path / "train.jsonl.zst").exists()


def test_bundled_corpus_is_small_and_fits_a_512_byte_block():
    files = [BUNDLED / "train.jsonl.zst", BUNDLED / "validation.jsonl.zst"]
    assert sum(path.stat().st_size for path in files) <= 5 * 2**20
    texts = {path.name: [r["text"] for r in read_jsonl(path)] for path in files}
    assert len(texts["train.jsonl.zst"]) + len(texts["validation.jsonl.zst"]) >= 2000
    assert not set(texts["train.jsonl.zst"]) & set(texts["validation.jsonl.zst"])
    for text in texts["train.jsonl.zst"] + texts["validation.jsonl.zst"]:
        assert text.count("<DFF>") == 1 and len(text.encode("utf-8")) <= 510
    readme = (BUNDLED / "README.md").read_text(encoding="utf-8")
    assert f"| `train.jsonl.zst` | {len(texts['train.jsonl.zst'])} |" in readme
