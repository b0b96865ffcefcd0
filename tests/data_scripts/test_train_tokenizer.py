"""The BPE tokenizer script: merges learnt from the corpus, special tokens as single ids, clear errors."""

import json

import pytest

from data_scripts.train_tokenizer import main
from diff_trainer.data.loading import DataError
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


def test_errors_name_the_problem(tmp_path, capsys):
    corpus = tmp_path / "train.jsonl"
    corpus.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="no column 'text'.*--text_column"):
        main(["--train_file", str(corpus), "--output_dir", str(tmp_path / "a")])
    write_corpus(corpus, ["some text"])
    with pytest.raises(ValueError, match="leaves no room for merges"):
        main(["--train_file", str(corpus), "--vocab_size", "200", "--output_dir", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()
    with pytest.raises(SystemExit):
        main(["--train_file", str(corpus), "--output_dir", str(tmp_path)])
    assert "exists" in capsys.readouterr().err
