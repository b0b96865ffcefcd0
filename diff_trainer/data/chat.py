"""Conversations rendered with a chat template, trained on the assistant turns (TRL's conversational format).

Records. `{"messages": [{"role", "content"}, ...]}`, or `{"prompt": [...], "completion": [...]}` (message lists;
only the completion's assistant turns are trained, as TRL's completion-only loss). Roles are system, user and
assistant; every content is a non-empty string; a conversation has an assistant turn to train.

Templates. `--chat_template NAME|FILE`: a name of `chat_templates/` (`llada`: GSAI-ML/LLaDA-8B-Instruct, which
always ends with the assistant header; `qwen2`: Qwen2-Instruct, which Dream-v0-Instruct-7B is said to reuse,
unconfirmed offline; `chatml`: the bare ChatML format) or a jinja file. Without one, the tokenizer's own template is
used.

Trained spans. An assistant turn k starts where the rendering of messages[:k] with the generation prompt ends, and
its trained text is its content as rendered (verbatim, or stripped for templates that trim) followed by the special
token the template writes after it (its end-of-turn token). Both are checked against the rendering of the whole
conversation: a template whose shorter renderings are not prefixes of the longer ones is refused. Each example
ends with its last trained turn. Modes: `all` trains every assistant turn in one example (TRL's assistant-only
loss), `expand` makes one example per assistant turn with the earlier turns as context (LLaDA's SFT), `last`
trains the final assistant turn only.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from .labels import IGNORE_INDEX
from .loading import DataError

ROLES = ("system", "user", "assistant")
MULTI_TURN_MODES = ("all", "expand", "last")
INVALID_RECORD_MODES = ("error", "skip")
TEMPLATE_DIR = Path(__file__).with_name("chat_templates")
# the special tokens each bundled template writes, added to a tokenizer that lacks them (e.g. `byte`)
TEMPLATE_TOKENS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "qwen2": ("<|im_start|>", "<|im_end|>"),
    "llada": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
}


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation and the character spans [start, end) of its trained turns, in order."""

    text: str
    spans: tuple[tuple[int, int], ...]


# ----------------------------------------------------------------------------------------------------
# Templates


def template_names() -> list[str]:
    """The names `--chat_template` accepts besides a file."""
    return sorted(path.stem for path in TEMPLATE_DIR.glob("*.jinja"))


def load_chat_template(name_or_file: str) -> str:
    """The jinja source of a bundled template (by name) or of a file."""
    bundled = TEMPLATE_DIR / f"{name_or_file}.jinja"
    path = bundled if bundled.is_file() else Path(name_or_file)
    if not path.is_file():
        raise DataError(
            f"--chat_template {name_or_file}: neither a bundled template ({', '.join(template_names())}) "
            "nor a file; pass one of those names or the path of a jinja file."
        )
    return path.read_text(encoding="utf-8")


def set_chat_template(tokenizer, chat_template: str) -> list[int]:
    """Give the tokenizer the template (saved with it) and, for a bundled one, the special tokens it writes that the
    tokenizer lacks; returns the new ids."""
    size = len(tokenizer)
    tokenizer.chat_template = load_chat_template(chat_template)
    missing = [token for token in TEMPLATE_TOKENS.get(chat_template, ()) if token not in tokenizer.get_added_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return list(range(size, len(tokenizer)))


def end_of_turn_token(tokenizer, template: str) -> str:
    """The special token the template writes after an assistant turn (found by rendering a short exchange)."""
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    full = render(tokenizer, template, messages, generation_prompt=False)
    _, end = turn_span(tokenizer, template, messages, 1, full)
    return next(
        token
        for token in tokenizer.get_added_vocab()
        if full[:end].endswith(token) and len(token) == end_of_turn_length(tokenizer, full[end - len(token) :])
    )


def resolve_template(tokenizer, chat_template: str | None) -> str:
    """The template to render with: the given name or file, else the tokenizer's own."""
    if chat_template is not None:
        return load_chat_template(chat_template)
    if isinstance(tokenizer.chat_template, str):
        return tokenizer.chat_template
    raise DataError(
        f"The tokenizer {tokenizer.name_or_path or type(tokenizer).__name__} has no chat template; pass "
        f"--chat_template with one of {', '.join(template_names())} or a jinja file."
    )


def render(
    tokenizer, template: str, messages: list[dict], generation_prompt: bool, continue_final: bool = False
) -> str:
    """The template's text for `messages`, with or without the assistant header that opens a reply;
    `continue_final`: cut after the last message's content, so the reply goes on from it (a prefilled answer)."""
    try:
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            chat_template=template,
            add_generation_prompt=generation_prompt,
            continue_final_message=continue_final,
        )
    except TemplateError as error:
        raise DataError(
            f"The chat template failed ({error}); it may need a special token the tokenizer lacks "
            "(bos_token, eos_token): set it on the tokenizer."
        ) from error


# ----------------------------------------------------------------------------------------------------
# Records


def record_messages(record: dict, messages_column: str = "messages") -> tuple[list, int]:
    """The record's conversation and the index of its first trainable message (after a prompt)."""
    if record.get(messages_column) is not None:
        return record[messages_column], 0
    prompt, completion = record.get("prompt"), record.get("completion")
    if prompt is None and completion is None:
        raise DataError(
            f"no '{messages_column}' field and no 'prompt'/'completion' pair; give each record one of "
            "those (--messages_column names the first)."
        )
    for name, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, list):
            raise DataError(f"'{name}' is {type(value).__name__}, not a list of messages.")
    return prompt + completion, len(prompt)


def is_conversational(columns: list[str], first: dict, messages_column: str = "messages") -> bool:
    """Whether records with these columns (`first` is one of them) are conversations: a messages column, or
    prompt/completion message lists."""
    if messages_column in columns:
        return True
    return {"prompt", "completion"} <= set(columns) and isinstance(first["prompt"], list)


def check_message_list(messages) -> None:
    """A DataError saying what is wrong with a list of messages: its shape, a role or an empty content."""
    if not isinstance(messages, list):
        raise DataError(f"the messages are {type(messages).__name__}, not a list of {{'role', 'content'}} dicts.")
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"message {number} is not a {{'role', 'content'}} dict.")
        if message["role"] not in ROLES:
            raise DataError(f"message {number} has role {message['role']!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(message["content"], str) or not message["content"].strip():
            raise DataError(f"message {number} ({message['role']}) has empty content; drop the message or fill it.")


def check_messages(messages, first_trainable: int = 0) -> None:
    """`check_message_list`, and a DataError when no assistant turn is left to train."""
    check_message_list(messages)
    if not assistant_turns(messages, first_trainable):
        where = "in the completion" if first_trainable else "to train"
        raise DataError(f"no assistant turn {where}; a conversation needs at least one assistant message.")


def assistant_turns(messages: list[dict], first_trainable: int = 0) -> list[int]:
    """Indices of the trainable assistant messages."""
    return [k for k, message in enumerate(messages) if k >= first_trainable and message["role"] == "assistant"]


def place(source: str | None, number: int) -> str:
    """Where a record is, for messages: `file, record N` or `record N` (1-based)."""
    return f"{source}, record {number}" if source else f"record {number}"


# ----------------------------------------------------------------------------------------------------
# Trained spans


def end_of_turn_length(tokenizer, text: str) -> int:
    """Length of the special token `text` starts with (the longest, when several match), 0 when none does."""
    return max((len(token) for token in tokenizer.get_added_vocab() if text.startswith(token)), default=0)


def turn_span(tokenizer, template: str, messages: list[dict], k: int, full: str) -> tuple[int, int]:
    """Character span of assistant turn k in `full`: its content and end-of-turn token."""
    opening = render(tokenizer, template, messages[:k], generation_prompt=True)
    through = render(tokenizer, template, messages[: k + 1], generation_prompt=False)
    if not through.startswith(opening) or not full.startswith(opening):
        raise DataError(
            f"the chat template is not prefix-stable: rendering messages 1..{k} with the generation prompt "
            f"does not give the start of the longer renderings, so message {k + 1}'s span cannot be "
            "found. Use a template that renders each turn independently of the later ones."
        )
    rest, content = through[len(opening) :], messages[k]["content"]
    shown = content if rest.startswith(content) else content.strip()
    if not rest.startswith(shown):
        raise DataError(
            f"the chat template changes the content of message {k + 1} beyond trimming it; its trained "
            "span cannot be found. Use a template that writes assistant contents as they are."
        )
    eot = end_of_turn_length(tokenizer, rest[len(shown) :])
    if eot == 0:
        raise DataError(
            f"the chat template writes {rest[len(shown) : len(shown) + 20]!r} after message {k + 1}, which "
            "does not start with a special token; add the template's end-of-turn token to the tokenizer "
            "(tokenizer.add_special_tokens)."
        )
    end = len(opening) + len(shown) + eot
    if not full.startswith(through[:end]):
        raise DataError(
            f"the chat template is not prefix-stable: message {k + 1} renders differently once later "
            "messages follow. Use a template that renders each turn independently of the later ones."
        )
    return len(opening), end


def render_conversation(tokenizer, template: str, messages: list[dict], first_trainable: int = 0) -> Rendered:
    """The whole conversation's text and the span of each trainable assistant turn."""
    full = render(tokenizer, template, messages, generation_prompt=False)
    spans = tuple(turn_span(tokenizer, template, messages, k, full) for k in assistant_turns(messages, first_trainable))
    return Rendered(full, spans)


def select_examples(rendered: Rendered, mode: str) -> list[Rendered]:
    """The examples a conversation gives under --multi_turn `mode`, each cut after its last trained span."""
    if mode not in MULTI_TURN_MODES:
        raise DataError(f"--multi_turn {mode}: use one of {', '.join(MULTI_TURN_MODES)}.")
    spans = rendered.spans
    groups = {"all": [spans], "last": [spans[-1:]], "expand": [(span,) for span in spans]}[mode]
    return [Rendered(rendered.text[: group[-1][1]], group) for group in groups]


def tokenize_example(tokenizer, example: Rendered) -> tuple[list[int], list[int]]:
    """Token ids and labels: each segment between span boundaries tokenised alone, spans labelled with their ids."""
    ids, labels, position = [], [], 0
    for start, end in example.spans:
        for segment, trained in ((example.text[position:start], False), (example.text[start:end], True)):
            piece = tokenizer(segment, add_special_tokens=False)["input_ids"] if segment else []
            ids += piece
            labels += piece if trained else [IGNORE_INDEX] * len(piece)
        position = end
    return ids, labels


def marked_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    """The decoded example with each trained span between [[ and ]], for the log."""
    pieces, trained = [], False
    for token, label in zip(ids, labels):
        if (label != IGNORE_INDEX) != trained:
            trained = not trained
            pieces.append("[[" if trained else "]]")
        pieces.append(tokenizer.decode([token]))
    return "".join(pieces) + ("]]" if trained else "")


# ----------------------------------------------------------------------------------------------------
# Data sets


def chat_examples(
    records: Iterable[dict],
    tokenizer,
    template: str,
    *,
    mode: str = "all",
    messages_column: str = "messages",
    source: str | None = None,
    invalid_records: str = "error",
) -> tuple[dict[str, list], int]:
    """`input_ids`/`labels` columns for conversational records and the number of bad records skipped.

    A bad record raises a DataError naming its place, or is skipped and counted with `invalid_records="skip"`.
    """
    if invalid_records not in INVALID_RECORD_MODES:
        raise DataError(f"--invalid_records {invalid_records}: use one of {', '.join(INVALID_RECORD_MODES)}.")
    columns, skipped = {"input_ids": [], "labels": []}, 0
    for number, record in enumerate(records, 1):
        try:
            messages, first_trainable = record_messages(record, messages_column)
            check_messages(messages, first_trainable)
        except DataError as error:
            if invalid_records == "skip":
                skipped += 1
                continue
            raise DataError(f"{place(source, number)}: {error}") from error
        try:
            rendered = render_conversation(tokenizer, template, messages, first_trainable)
        except DataError as error:
            raise DataError(f"{place(source, number)}: {error}") from error
        for example in select_examples(rendered, mode):
            ids, labels = tokenize_example(tokenizer, example)
            columns["input_ids"].append(ids)
            columns["labels"].append(labels)
    return columns, skipped


def preference_texts(tokenizer, template: str, prompt, chosen, rejected) -> tuple[str, str, str]:
    """TRL's conversational preference record as texts: the prompt rendered with the generation prompt, and the
    chosen and rejected continuations after it (through the end of their last assistant turn)."""
    check_message_list(prompt)
    opening = render(tokenizer, template, prompt, generation_prompt=True)
    continuations = []
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        try:
            check_messages(reply)
        except DataError as error:
            raise DataError(f"'{name}': {error}") from error
        if reply[0]["role"] != "assistant":
            raise DataError(
                f"'{name}' starts with a {reply[0]['role']} message; it must start with the assistant's "
                "reply to the prompt."
            )
        rendered = render_conversation(tokenizer, template, prompt + reply, len(prompt))
        continuations.append(rendered.text[len(opening) : rendered.spans[-1][1]])
    return opening, continuations[0], continuations[1]
