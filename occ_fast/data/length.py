"""Prompts longer than the limit (``data.max_prompt_tokens``, the model's context) are dropped at
load, and counted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from occ_fast.data.records import PromptRecord


@dataclass
class LengthFiltered:
    records: list[PromptRecord]
    num_dropped: int
    longest: int  # tokens of the longest prompt seen (kept or not)


def drop_long_prompts(
    records: list[PromptRecord], encode: Callable[[PromptRecord], list[int]], max_tokens: int
) -> LengthFiltered:
    """Keep the records whose encoded prompt has at most ``max_tokens`` tokens, in order.

    ``encode`` is the rollout's own prompt encoding (chat template included), so the limit counts
    exactly the tokens a rollout would feed the model."""
    kept, longest = [], 0
    for record in records:
        length = len(encode(record))
        longest = max(longest, length)
        if length <= max_tokens:
            kept.append(record)
    return LengthFiltered(kept, len(records) - len(kept), longest)
