"""The fortunes corpus script on a small fake fortune directory: entries, stable split, missing source."""

import pytest

from data_scripts.make_fortunes_corpus import in_validation, main, read_fortunes
from diff_trainer.data.io import read_jsonl


def test_entries_and_split(tmp_path):
    source = tmp_path / "fortunes"
    source.mkdir()
    (source / "fortunes").write_text("First line.  \n\t\t-- Someone\n%\n%\nSecond.\n%\nFirst line.\n\t\t-- Someone\n")
    (source / "riddles").write_text("Q: Why?\nA: Because.\n")
    assert read_fortunes(source / "fortunes") == [
        "First line.\n\t\t-- Someone",
        "Second.",
        "First line.\n\t\t-- Someone",
    ]
    out = tmp_path / "out"
    main(
        [
            "--source_dir",
            str(source),
            "--files",
            "fortunes",
            "riddles",
            "--output_dir",
            str(out),
            "--validation_fraction",
            "0.5",
        ]
    )
    train = [r["text"] for r in read_jsonl(out / "train.jsonl.zst")]
    validation = [r["text"] for r in read_jsonl(out / "validation.jsonl.zst")]
    assert sorted(train + validation) == sorted(["First line.\n\t\t-- Someone", "Second.", "Q: Why?\nA: Because."])
    assert all(in_validation(t, 0.5) for t in validation) and not any(in_validation(t, 0.5) for t in train)
    assert f"| `train.jsonl.zst` | {len(train)} |" in (out / "README.md").read_text()


def test_missing_source(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--source_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert "apt-get install -y fortunes-min" in capsys.readouterr().err
