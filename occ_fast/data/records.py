"""The prompt record every dataset source produces."""

from __future__ import annotations

from dataclasses import dataclass

Messages = list[dict[str, str]]  # chat turns: {"role": ..., "content": ...}


@dataclass(frozen=True)
class PromptRecord:
    """One prompt with its verifiable answer.

    ``prompt`` is either plain text or a chat ``messages`` list (the rollout side applies the chat
    template); ``source`` says where the record came from (``file, row N`` or ``synthetic:split:i``)
    so a later error can name it.
    """

    prompt: str | Messages
    answer: str
    source: str
