"""Tokenizers without network access.

Tests and toy runs need a real tokenizer but may not download one, so ``train_bpe_tokenizer`` trains
a small byte-level BPE on a corpus in well under a second; real runs load a local HF tokenizer
directory through ``load_tokenizer``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)

# Files that make a directory loadable by AutoTokenizer (any one of them is enough).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def train_bpe_tokenizer(
    corpus: Iterable[str], vocab_size: int = 512, *, split_digits: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` and wrap it with pad/bos/eos tokens.

    ``split_digits`` keeps every digit a token of its own (as Qwen and Llama 3 tokenizers do), so
    that numbers are written digit by digit: arithmetic becomes learnable by a tiny model and its
    answers span several tokens, which is what an MTP head needs to have something to predict.

    Byte-level pre-tokenisation makes encode/decode lossless for any text (spaces, digits, unicode),
    so arithmetic prompts and answers round-trip exactly. Special tokens get ids 0 (pad), 1 (bos),
    2 (eos). No BOS is prepended automatically: prompts decide their own format.
    """
    texts = list(corpus)
    if not texts:
        raise ValueError("train_bpe_tokenizer: the corpus is empty")
    min_vocab = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < min_vocab:
        raise ValueError(
            f"train_bpe_tokenizer: vocab_size={vocab_size} is below {min_vocab} "
            "(256 byte tokens + 3 special tokens)"
        )
    backend = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (never the Hub) and make sure it can pad.

    Models that ship without a pad token (Llama, some Qwen checkpoints) get their EOS token as pad:
    padding is always masked, so the choice of id does not matter, only that one exists.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {directory}")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{directory} holds no tokenizer: expected one of {', '.join(TOKENIZER_FILES)}"
        )
    # Never the checkpoint's own code (MiMo's config maps to it): a question on stdin would stall the
    # run, and the tokenizer files load without it.
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer at {directory} defines no EOS token; generation could never stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
