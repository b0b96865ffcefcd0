"""A byte-level BPE tokenizer (GPT-2's scheme) trained on a corpus, for models trained from scratch.

Byte-level: every text can be encoded (no unknown token), and a vocabulary of a few thousand pieces turns a small
corpus's frequent words into single ids, so a small model's samples are made of whole words sooner than a byte or
character model's. The special tokens (EOS, `<DFF>`, the mask token) are single ids that merges never cross.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .char_tokenizer import EOS_TOKEN


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    dff_token: str | None = "<DFF>",
    mask_token: str | None = "<|mdm_mask|>",
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most `vocab_size` ids (256 byte ids and the special tokens included) learnt from
    `texts`, wrapped for transformers with EOS as the pad token."""
    specials = [EOS_TOKEN] + [token for token in (dff_token, mask_token) if token is not None]
    floor = len(pre_tokenizers.ByteLevel.alphabet()) + len(specials)
    if vocab_size <= floor:
        raise ValueError(
            f"vocab_size {vocab_size} leaves no room for merges: the 256 byte ids and "
            f"{len(specials)} special tokens alone take {floor}."
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    extra = {"extra_special_tokens": [dff_token]} if dff_token is not None else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        mask_token=mask_token,
        model_input_names=["input_ids", "attention_mask"],
        **extra,
    )
