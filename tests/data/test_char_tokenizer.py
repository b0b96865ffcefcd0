"""The character tokenizer: sorted vocabulary after single-id specials, round trips, save/reload, unknowns."""

import logging

from transformers import AutoTokenizer

import diff_trainer.models  # noqa: F401  registers the tokenizer class
from diff_trainer.data.char_tokenizer import CharTokenizer, build_char_tokenizer

TEXTS = ["To be, or not", "to be:\nthat<DFF> is"]


def test_vocabulary_and_round_trip():
    tokenizer = build_char_tokenizer(TEXTS)
    characters = sorted(set("".join(TEXTS).replace("<DFF>", "")))
    vocab = tokenizer.get_vocab()
    assert [vocab[c] for c in characters] == list(range(5, 5 + len(characters)))
    assert len(tokenizer) == 5 + len(characters)
    assert [
        tokenizer.unk_token_id,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.mask_token_id,
        tokenizer.convert_tokens_to_ids("<DFF>"),
    ] == [0, 1, 2, 3, 4]
    ids = tokenizer.encode("be<DFF>not\n", add_special_tokens=False)
    assert ids == [vocab["b"], vocab["e"], 4, vocab["n"], vocab["o"], vocab["t"], vocab["\n"]]
    assert tokenizer.decode(ids) == "be<DFF>not\n"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "benot\n"
    assert tokenizer.unknown_characters == 0


def test_save_and_reload(tmp_path):
    tokenizer = build_char_tokenizer(TEXTS)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.encode("not that", add_special_tokens=False) == tokenizer.encode("not that", add_special_tokens=False)
    assert loaded.mask_token == "<|mdm_mask|>" and loaded.eos_token == "<|endoftext|>"


def test_unknown_characters_counted_and_warned_once(caplog):
    tokenizer = build_char_tokenizer(TEXTS)
    with caplog.at_level(logging.WARNING):
        first = tokenizer.encode("toZ!", add_special_tokens=False)
        tokenizer(["Zoo", "ok"])
    assert first[2:] == [tokenizer.unk_token_id] * 2
    assert tokenizer.unknown_characters == 4  # Z ! Z k
    assert sum("never saw in training" in r.message for r in caplog.records) == 1


def test_run_clm_diff_char_level_checkpoint(tmp_path):
    """--tokenizer_name char: the vocabulary comes from the training split and is saved with the checkpoint."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("run_clm_diff", root / "run_clm_diff.py")
    run_clm_diff = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_clm_diff)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["abcab cab", "bca abc", "cc ab"] * 4))
    valid = tmp_path / "validation.jsonl"
    valid.write_text(json.dumps({"text": "abz ab cab abc bca abc cab ab"}) + "\n")
    out = tmp_path / "out"
    run_clm_diff.main(
        [
            "--train_file",
            str(train),
            "--validation_file",
            str(valid),
            "--tokenizer_name",
            "char",
            "--model_type",
            "llama",
            "--config_overrides",
            "hidden_size=16,intermediate_size=32,"
            "num_hidden_layers=1,num_attention_heads=2,num_key_value_heads=2,max_position_embeddings=32",
            "--train_diff_model",
            "--block_size",
            "16",
            "--concatenate_texts",
            "--output_dir",
            str(out),
            "--do_train",
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "2",
            "--use_cpu",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--eval_mc_samples",
            "0",
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(tokenizer, CharTokenizer)
    specials = {"<unk>", "<pad>", "<|endoftext|>", "<|mdm_mask|>", "<DFF>"}
    assert set(tokenizer.get_vocab()) == specials | set("abc ")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tokenizer) == 9
