"""Prompt records to token ids, the same way for training, rollouts and evaluation."""

from __future__ import annotations

from collections.abc import Mapping

from transformers import PreTrainedTokenizerBase

from occ_fast.data import PromptRecord


def encode_prompt(tokenizer: PreTrainedTokenizerBase, record: PromptRecord) -> list[int]:
    """Chat ``messages`` go through the tokenizer's chat template (with the generation prompt);
    plain text is tokenised as is, with no special tokens added."""
    if isinstance(record.prompt, str):
        ids = tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
    else:
        if tokenizer.chat_template is None:
            raise ValueError(f"{record.source}: chat messages need a tokenizer with a chat template")
        ids = tokenizer.apply_chat_template(record.prompt, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, Mapping):  # transformers >= 5 returns a BatchEncoding (a UserDict, not a dict)
            ids = ids["input_ids"]
    if not ids:
        raise ValueError(f"{record.source}: the prompt encodes to no tokens")
    return list(ids)
