"""The BPE tokenizer script: merges learnt from the corpus, special tokens as single ids, clear errors."""

import json

import pytest

from data_scripts.train_tokenizer import main
from diff_trainer.models.loading import load_saved_tokenizer


def write_corpus(path, texts):
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))


def test_learns_frequent_words_and_keeps_special_tokens_whole(tmp_path):
    corpus = tmp_path / "train.jsonl"
    write_corpus(corpus, ["the cat sat on the mat"] * 20 + ["a dog<DFF>the dog ran"] * 20)
    out = tmp_path / "bpe"
    main(["--train_file", str(corpus), "--vocab_size", "300", "--output_dir", str(out)])
    tokenizer = load_saved_tokenizer(str(out))
    assert len(tokenizer) <= 300 and tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    text = "the cat<DFF>the mat<|mdm_mask|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # every word of the corpus became one piece; the two special tokens are one id each
    assert [tokenizer.convert_ids_to_tokens(i) for i in ids] == ["the", "Ġcat", "<DFF>", "the", "Ġmat", "<|mdm_mask|>"]
    assert tokenizer.decode(ids) == text
    unseen = "Zebra ünïcode ✓"  # bytes the corpus never had still encode (byte-level: no unknown id)
    assert tokenizer.decode(tokenizer.encode(unseen, add_special_tokens=False)) == unseen


def one_line_error(argv, capsys) -> tuple[int, str]:
    """Exit status and the stderr of `main(argv)`, which must end with one line and no traceback."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return stopped.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def test_errors_name_the_problem(tmp_path, capsys):
    corpus = tmp_path / "train.jsonl"
    corpus.write_text('{"body": "x"}\n')
    code, err = one_line_error(["--train_file", str(corpus), "--output_dir", str(tmp_path / "a")], capsys)
    assert code == 1 and "no column 'text'" in err and "--text_column" in err
    corpus.write_text("")
    code, err = one_line_error(["--train_file", str(corpus), "--output_dir", str(tmp_path / "a")], capsys)
    assert code == 1 and err.endswith("train.jsonl: no records (the file is empty).")
    write_corpus(corpus, ["some text"])
    for size in ("200", "0"):
        code, err = one_line_error(
            ["--train_file", str(corpus), "--vocab_size", size, "--output_dir", str(tmp_path / "b")], capsys
        )
        assert code == 2 and f"error: vocab_size {size} leaves no room for merges" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(SystemExit):
        main(["--train_file", str(corpus), "--output_dir", str(tmp_path)])
    assert "exists" in capsys.readouterr().err
