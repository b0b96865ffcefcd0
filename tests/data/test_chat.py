"""Conversations: renderings and trained spans against texts typed from the LLaDA and Qwen2 model cards, the three
--multi_turn modes, bad records (error or counted skip) and labels with the project's tokenizers."""

import pytest
from transformers import ByT5Tokenizer

from diff_trainer.data.bpe_tokenizer import train_bpe_tokenizer
from diff_trainer.data.char_tokenizer import build_char_tokenizer
from diff_trainer.data.chat import (
    Rendered,
    chat_examples,
    load_chat_template,
    preference_texts,
    render_conversation,
    resolve_template,
    select_examples,
    template_names,
)
from diff_trainer.data.labels import IGNORE_INDEX
from diff_trainer.data.loading import DataError

SPECIAL_TOKENS = {
    "llada": {
        "bos_token": "<|startoftext|>",
        "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    },
    "qwen2": {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]},
}
CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]
# typed from the templates of GSAI-ML/LLaDA-8B-Instruct and Qwen2-Instruct
LLADA_TEXT = (
    "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nRome.<|eot_id|>"
)
LLADA_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"  # the release writes it after every rendering
QWEN2_TEXT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\nParis.<|im_end|>\n"
    "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
    "<|im_start|>assistant\nRome.<|im_end|>"
)
EXPECTED = {
    "llada": (LLADA_TEXT, LLADA_TEXT + LLADA_HEADER, ["Paris.<|eot_id|>", "Rome.<|eot_id|>"]),
    "qwen2": (QWEN2_TEXT, QWEN2_TEXT + "\n", ["Paris.<|im_end|>", "Rome.<|im_end|>"]),
}
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,?!'\n"


def char_tokenizer(template: str):
    tokenizer = build_char_tokenizer([ALPHABET])
    tokenizer.add_special_tokens(SPECIAL_TOKENS[template])
    return tokenizer


def bpe_tokenizer(template: str):
    tokenizer = train_bpe_tokenizer([m["content"] for m in CONVERSATION] * 20 + [QWEN2_TEXT], vocab_size=300)
    tokenizer.add_special_tokens(SPECIAL_TOKENS[template])
    return tokenizer


def byt5_tokenizer(template: str):
    tokenizer = ByT5Tokenizer()
    tokenizer.add_special_tokens(SPECIAL_TOKENS[template])
    return tokenizer


def spans_text(rendered: Rendered) -> list[str]:
    return [rendered.text[start:end] for start, end in rendered.spans]


def trained_runs(ids, labels) -> list[list[int]]:
    """The ids of each maximal run of trained positions."""
    runs, previous = [], False
    for token, label in zip(ids, labels):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = trained
    return runs


@pytest.mark.parametrize("name", ["llada", "qwen2"])
def test_rendering_and_spans_match_the_model_cards(name):
    tokenizer, template = char_tokenizer(name), load_chat_template(name)
    text, untrimmed, trained = EXPECTED[name]
    rendered = render_conversation(tokenizer, template, CONVERSATION)
    assert rendered.text == untrimmed
    assert spans_text(rendered) == trained
    (example,) = select_examples(rendered, "all")
    assert example.text == text and spans_text(example) == trained


@pytest.mark.parametrize("name", ["llada", "qwen2"])
def test_expand_gives_one_example_per_assistant_turn(name):
    """LLaDA's SFT: turn i is trained with the earlier turns and the i-th user message as its prompt."""
    rendered = render_conversation(char_tokenizer(name), load_chat_template(name), CONVERSATION)
    text, _, (first, second) = EXPECTED[name]
    one, two = select_examples(rendered, "expand")
    assert one.text == text[: text.index(first) + len(first)] and spans_text(one) == [first]
    assert two.text == text and spans_text(two) == [second]
    (last,) = select_examples(rendered, "last")
    assert last.text == text and spans_text(last) == [second]


def test_llada_trims_contents_and_the_span_follows():
    conversation = [{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "\nHello. "}]
    rendered = render_conversation(char_tokenizer("llada"), load_chat_template("llada"), conversation)
    assert spans_text(rendered) == ["Hello.<|eot_id|>"]
    assert rendered.text.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")


def test_prompt_completion_trains_the_completion_only():
    record = {"prompt": CONVERSATION[:3], "completion": CONVERSATION[3:]}
    tokenizer = char_tokenizer("qwen2")
    columns, skipped = chat_examples([record], tokenizer, load_chat_template("qwen2"))
    (ids,), (labels,) = columns["input_ids"], columns["labels"]
    assert skipped == 0 and tokenizer.decode(ids) == QWEN2_TEXT
    assert [tokenizer.decode(run) for run in trained_runs(ids, labels)] == ["Rome.<|im_end|>"]


@pytest.mark.parametrize("make", [char_tokenizer, bpe_tokenizer, byt5_tokenizer], ids=["char", "bpe", "byt5"])
@pytest.mark.parametrize("name", ["llada", "qwen2"])
def test_labels_cover_assistant_content_and_end_of_turn(make, name):
    tokenizer = make(name)
    text, _, trained = EXPECTED[name]
    columns, _ = chat_examples([{"messages": CONVERSATION}], tokenizer, load_chat_template(name))
    (ids,), (labels,) = columns["input_ids"], columns["labels"]
    assert tokenizer.decode(ids) == text
    runs = trained_runs(ids, labels)
    assert [tokenizer.decode(run) for run in runs] == trained
    end_of_turn = tokenizer.convert_tokens_to_ids(trained[0][len("Paris.") :])
    assert [run[-1] for run in runs] == [end_of_turn, end_of_turn]  # one id, trained


def test_expand_rows_and_their_labels():
    tokenizer = char_tokenizer("llada")
    columns, _ = chat_examples([{"messages": CONVERSATION}], tokenizer, load_chat_template("llada"), mode="expand")
    assert len(columns["input_ids"]) == 2
    decoded = [
        [tokenizer.decode(run) for run in trained_runs(ids, labels)]
        for ids, labels in zip(columns["input_ids"], columns["labels"])
    ]
    assert decoded == [["Paris.<|eot_id|>"], ["Rome.<|eot_id|>"]]
    assert columns["input_ids"][1][: len(columns["input_ids"][0])] == columns["input_ids"][0]


USER, ASSISTANT = CONVERSATION[:2]
BAD_RECORDS = [
    ({"messages": "What is the capital of France?"}, "the messages are str, not a list"),
    ({"messages": [{"role": "robot", "content": "Beep."}, ASSISTANT]}, "message 1 has role 'robot'"),
    ({"messages": [USER]}, "no assistant turn to train"),
    ({"messages": [USER, {"role": "assistant", "content": "  "}]}, "message 2 (assistant) has empty content"),
    ({"messages": [USER, {"role": "assistant"}]}, "message 2 is not a {'role', 'content'} dict"),
    ({"prompt": [USER, ASSISTANT], "completion": [USER]}, "no assistant turn in the completion"),
    ({"prompt": "Hi", "completion": [ASSISTANT]}, "'prompt' is str, not a list of messages"),
    ({"text": "Hi"}, "no 'messages' field and no 'prompt'/'completion' pair"),
]


@pytest.mark.parametrize("bad, message", BAD_RECORDS)
def test_bad_record_names_file_and_record(bad, message):
    records = [{"messages": CONVERSATION}, bad]
    with pytest.raises(DataError) as raised:
        chat_examples(records, char_tokenizer("qwen2"), load_chat_template("qwen2"), source="chats.jsonl")
    assert str(raised.value).startswith(f"chats.jsonl, record 2: {message}")


def test_bad_records_skipped_and_counted():
    records = [{"messages": CONVERSATION}] + [bad for bad, _ in BAD_RECORDS] + [{"messages": CONVERSATION[:2]}]
    columns, skipped = chat_examples(
        records, char_tokenizer("qwen2"), load_chat_template("qwen2"), invalid_records="skip"
    )
    assert skipped == len(BAD_RECORDS) and len(columns["input_ids"]) == 2


def test_template_choice():
    assert template_names() == ["chatml", "llada", "qwen2"]
    tokenizer = char_tokenizer("qwen2")
    with pytest.raises(DataError, match="has no chat template; pass --chat_template with one of chatml, llada"):
        resolve_template(tokenizer, None)
    tokenizer.chat_template = load_chat_template("chatml")
    assert resolve_template(tokenizer, None) == tokenizer.chat_template
    assert resolve_template(tokenizer, "qwen2") == load_chat_template("qwen2")
    with pytest.raises(DataError, match="--chat_template vicuna: neither a bundled template"):
        load_chat_template("vicuna")


def test_template_from_a_file_and_chatml(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(load_chat_template("chatml"))
    rendered = render_conversation(char_tokenizer("qwen2"), load_chat_template(str(path)), CONVERSATION[:2])
    assert rendered.text == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
    )
    assert spans_text(rendered) == ["Paris.<|im_end|>"]


def test_templates_that_cannot_be_split_are_refused():
    tokenizer = char_tokenizer("qwen2")
    counting = "{{ messages | length }}{% for m in messages %}{{ m['content'] + '<|im_end|>' }}{% endfor %}"
    with pytest.raises(DataError, match="record 1: the chat template is not prefix-stable"):
        chat_examples([{"messages": CONVERSATION}], tokenizer, counting)
    closing = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] + '\\n' }}{% elif loop.last %}"
        "{{ m['content'] + '<|im_end|>' }}{% else %}{{ m['content'] + '<|im_start|>' }}{% endif %}{% endfor %}"
    )
    with pytest.raises(DataError, match="message 2 renders differently once later messages follow"):
        render_conversation(tokenizer, closing, CONVERSATION)
    shouting = "{% for m in messages %}{{ m['content'] | upper + '<|im_end|>' }}{% endfor %}"
    with pytest.raises(DataError, match="changes the content of message 2 beyond trimming"):
        render_conversation(tokenizer, shouting, CONVERSATION)
    plain = build_char_tokenizer([ALPHABET + "<|>_"])  # ChatML's markers are not special tokens here
    with pytest.raises(DataError, match=r"writes '<\|im_end\|>\\n' after message 2, which does not start"):
        render_conversation(plain, load_chat_template("chatml"), CONVERSATION)


def test_missing_bos_token_is_reported():
    tokenizer = char_tokenizer("qwen2")
    with pytest.raises(DataError, match="'bos_token' is undefined"):
        render_conversation(tokenizer, load_chat_template("llada"), CONVERSATION)


def test_preference_texts():
    prompt = CONVERSATION[:1]
    chosen, rejected = [{"role": "assistant", "content": "Paris."}], [{"role": "assistant", "content": "Lyon."}]
    texts = preference_texts(char_tokenizer("qwen2"), load_chat_template("qwen2"), prompt, chosen, rejected)
    assert texts == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "Paris.<|im_end|>",
        "Lyon.<|im_end|>",
    )
    texts = preference_texts(char_tokenizer("llada"), load_chat_template("llada"), prompt, chosen, rejected)
    assert texts == (LLADA_TEXT[: LLADA_TEXT.index("Paris.")], "Paris.<|eot_id|>", "Lyon.<|eot_id|>")
    with pytest.raises(DataError, match="'rejected': no assistant turn to train"):
        preference_texts(char_tokenizer("qwen2"), load_chat_template("qwen2"), prompt, chosen, [USER])
