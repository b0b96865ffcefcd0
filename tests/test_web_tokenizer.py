"""web/js/tokenizer.js (run with Node) against the Python tokenizers (ByT5, and a byte-level BPE trained here), on the
table diff-export-onnx writes."""

import shutil

import pytest

from conftest import make_byte_tokenizer
from diff_trainer.cli.export_onnx import tokenizer_table
from test_web_sampler import node

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (apt install nodejs)")

TEXTS = [
    "def json.dumps(obj)<DFF>",
    "Ünïcödé ✓ and 日本語",
    "a </s> b<pad>  c",  # whitespace around tokens that strip it
    "<extra_id_3><|mdm_mask|><DFF><DFF",
    "tabs\tand\nnewlines  ",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def test_encoding_matches_the_python_tokenizer(tokenizer):
    table = tokenizer_table(tokenizer, len(tokenizer))
    expected = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    assert node({"encode": {"table": table, "texts": TEXTS}}) == expected


def test_decoding_matches_the_python_tokenizer_skipping_special_tokens(tokenizer):
    table = tokenizer_table(tokenizer, len(tokenizer))
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    ids.append([3 + 0xC3, 3 + ord("a"), 3 + 0xA9])  # a broken UTF-8 sequence: invalid bytes are dropped
    expected = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    assert node({"decode": {"table": table, "ids": ids, "skip": tokenizer.all_special_ids}}) == expected


def test_pieces_are_the_terminal_views_pieces(tokenizer):
    table = tokenizer_table(tokenizer, len(tokenizer))
    assert table["pieces"][3 + ord("a")] == "a" and table["pieces"][3 + ord("\n")] == "\\n"
    assert table["pieces"][tokenizer.convert_tokens_to_ids("<DFF>")] == "<DFF>"


# Byte-level BPE: a tokenizer learnt in the test (data_scripts/train_tokenizer.py's code) on a small corpus.
BPE_CORPUS = [
    "Don't panic. It's what they'd say, isn't it? We're sure you'll see I'm right.",
    "\t\t-- Mark Twain\n\nThe cat's hat, 1234 times 56789.",
    "Ünïcödé words: naïve café, 日本語のテキスト, emoji 🎉🎉 and ✓ marks.",
    "   spaces   before and after   \n  \n\tindented lines\r\n",
    "Copyright © 1999 ©, fullwidth ！ ！ ？ marks",  # spaces before two- and three-byte characters get merged
] * 4
BPE_TEXTS = [
    "Don't panic, it's  what   they'd say.",  # contractions, runs of spaces
    "She'S DON'T 're 've 'm 'll 'd 'x",  # upper-case contractions are not split off
    "\t\t-- Mark Twain\n\n\nnext\r\n  \n",  # tabs, newline runs, trailing whitespace
    "1234567 times 3.14159, 10,000!",
    "naïve café 日本語 🎉✓ e\u0301 \u00a0nbsp\u2003em\u0085nel\u2028ls",  # a combining mark, odd spaces
    "\ufeffbom at the start",
    "x \ufeffy \u0085z ！",  # whitespace to Oniguruma, not to JavaScript's \s (U+0085), and the reverse (U+FEFF)
    "a spaced word,日本 <sep>  b <sep>c",  # added tokens outside the byte alphabet, one stripping whitespace
    "in<DFF>side a word<DFF> and <|mdm_mask|><|mdm_mask|>x<|endoftext|>",
    "<DFF",
    "",
]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    from transformers import AddedToken

    from diff_trainer.data.bpe_tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(BPE_CORPUS, vocab_size=400, min_frequency=2)
    tokenizer.add_tokens([" spaced word", "日本", AddedToken("<sep>", lstrip=True, rstrip=True, special=True)])
    return tokenizer


def test_bpe_encoding_matches_the_python_tokenizer(bpe_tokenizer):
    table = tokenizer_table(bpe_tokenizer, len(bpe_tokenizer))
    assert table["kind"] == "bpe" and len(table["merges"]) > 50  # merges are exercised, not only single bytes
    expected = [bpe_tokenizer.encode(text, add_special_tokens=False) for text in BPE_TEXTS]
    assert any(len(bpe_tokenizer.convert_ids_to_tokens(ids)[0]) > 2 for ids in expected)
    assert node({"encode": {"table": table, "texts": BPE_TEXTS}}) == expected


def test_bpe_encodes_every_byte_through_the_same_alphabet(bpe_tokenizer):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = tokenizer_table(bpe_tokenizer, len(bpe_tokenizer))
    alphabet = bytes_to_unicode()
    assert table["byte_chars"] == "".join(alphabet[b] for b in range(256))
    # every byte that UTF-8 text can hold: one- and two-byte characters, and three- and four-byte lead bytes
    text = "".join(map(chr, range(0x800))) + "".join(map(chr, range(0x1000, 0x10000, 0x1000))) + "𐀀🎉\U000f0000"
    assert node({"encode": {"table": table, "texts": [text]}}) == [bpe_tokenizer.encode(text, add_special_tokens=False)]


def test_bpe_decoding_matches_the_python_tokenizer(bpe_tokenizer):
    table = tokenizer_table(bpe_tokenizer, len(bpe_tokenizer))
    ids = [bpe_tokenizer.encode(text, add_special_tokens=False) for text in BPE_TEXTS]
    byte_id = {byte: bpe_tokenizer.convert_tokens_to_ids(char) for byte, char in enumerate(table["byte_chars"])}
    ids += [
        [byte_id[b] for b in broken]
        for broken in (
            [0xC3, ord("a"), 0xA9],  # a lead byte without its continuation
            [0xE6, 0x97, ord("!"), 0xF0, 0x9F, 0x8E],  # truncated three- and four-byte characters
            [0xC0, 0xAF, 0xFF, 0xED, 0xA0, 0x80],  # overlong, never-valid and surrogate bytes
        )
    ]
    ids.append(list(range(len(bpe_tokenizer))))  # every id once, special ones included
    special = [i for i, token in bpe_tokenizer.added_tokens_decoder.items() if token.special]  # what tokenizers skips
    for skip in ([], special):
        expected = [bpe_tokenizer.decode(row, skip_special_tokens=bool(skip)) for row in ids]
        assert node({"decode": {"table": table, "ids": ids, "skip": skip}}) == expected
