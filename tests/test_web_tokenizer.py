"""web/js/tokenizer.js (run with Node) against transformers' ByT5 tokenizer, on the table diff-export-onnx writes."""

import shutil

import pytest
from conftest import make_byte_tokenizer
from test_web_sampler import node

from diff_trainer.cli.export_onnx import tokenizer_table

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
