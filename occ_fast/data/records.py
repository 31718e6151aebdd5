"""The prompt record every dataset source produces."""

from __future__ import annotations

from dataclasses import dataclass

Messages = list[dict[str, str]]  # chat turns: {"role": ..., "content": ...}


@dataclass(frozen=True)
class PromptRecord:
    """One prompt with its verifiable answer.

    ``prompt`` is either plain text or a chat ``messages`` list (the rollout side applies the chat
    template); ``source`` says where the record came from (``file, row N`` or ``synthetic:split:i``)
    so a later error can name it. ``solution`` is a whole reference completion when the source has
    one (the synthetic task's worked solutions), what a supervised warm start trains on; None means
    the answer alone.
    """

    prompt: str | Messages
    answer: str
    source: str
    solution: str | None = None

    @property
    def reference_completion(self) -> str:
        """The completion a supervised warm start teaches: the worked solution, else the answer."""
        return self.answer if self.solution is None else self.solution
