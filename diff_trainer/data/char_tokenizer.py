"""`--tokenizer_name char`: a character-level tokenizer built from the training split, saved as `tokenizer.json`.

One id per distinct character of the training texts (sorted), after the special tokens (unk, pad, EOS, mask, <DFF>),
each of which is a single id. A character never seen in training maps to the unk id; the first time that happens a
warning is logged, and `unknown_characters` counts them.
"""

import logging
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

CHAR_TOKENIZER = "char"
UNK_TOKEN, PAD_TOKEN, EOS_TOKEN = "<unk>", "<pad>", "<|endoftext|>"


class CharTokenizer(PreTrainedTokenizerFast):
    """A fast tokenizer with one token per character that counts the characters it does not know."""

    # No __init__ of its own: transformers then loads a saved one straight from tokenizer.json.
    unknown_characters = 0

    def _encode_plus(self, *args, **kwargs):
        encoding = super()._encode_plus(*args, **kwargs)
        ids = encoding["input_ids"]
        rows = ids if ids and isinstance(ids[0], list) else [ids]
        unknown = sum(row.count(self.unk_token_id) for row in rows)
        if unknown:
            if not self.unknown_characters:
                logger.warning(
                    "Text holds characters the char tokenizer never saw in training; they become %s "
                    "(counted in tokenizer.unknown_characters).",
                    self.unk_token,
                )
            self.unknown_characters += unknown
        return encoding


def build_char_tokenizer(
    texts: Iterable[str], *, dff_token: str | None = "<DFF>", mask_token: str | None = "<|mdm_mask|>"
) -> CharTokenizer:
    """The character vocabulary of `texts` (special-token strings inside them excluded) as a CharTokenizer."""
    specials = [UNK_TOKEN, PAD_TOKEN, EOS_TOKEN] + [t for t in (mask_token, dff_token) if t is not None]
    characters = set()
    for text in texts:
        for special in specials:
            text = text.replace(special, "")
        characters.update(text)
    vocab = {token: index for index, token in enumerate(specials + sorted(characters))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    backend.decoder = decoders.Fuse()
    extra = {"additional_special_tokens": [dff_token]} if dff_token is not None else {}
    return CharTokenizer(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        mask_token=mask_token,
        **extra,
    )


def training_texts(train_split, data_args) -> Iterable[str]:
    """The texts of the training split the vocabulary is built from: the text column, or prompt and response."""
    columns = (
        [data_args.text_column]
        if data_args.prompt_column is None
        else [data_args.prompt_column, data_args.response_column]
    )
    missing = [name for name in columns if name not in train_split.column_names]
    if missing:
        raise ValueError(
            f"--tokenizer_name char reads the training column(s) {', '.join(missing)}, which the data "
            f"lacks (it has {', '.join(train_split.column_names)})."
        )
    for name in columns:
        yield from (text for text in train_split[name] if text is not None)


def register_char_tokenizer(config_class) -> None:
    """Let `AutoTokenizer.from_pretrained` rebuild a saved CharTokenizer (its tokenizer_config names the class)."""
    AutoTokenizer.register(config_class, tokenizer_class=CharTokenizer, exist_ok=True)
