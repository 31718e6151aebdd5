"""What every rollout engine takes and returns, so the trainer never depends on a backend.

Engines (the transformers engine here, vLLM later) turn prompts into completions plus the log-probs
of the tokens they sampled. Those log-probs are the *behaviour policy* log-probs: they come from the
distribution actually sampled from, i.e. after temperature and after top-k/top-p truncation and
renormalisation. With top-k/top-p off they equal the trainer's ``log_softmax(logits / T)`` up to
numerics; with top-k/top-p on they are larger (the truncated mass is renormalised away) and must not
be used as ``lp_old`` without an importance-sampling correction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["eos", "length"]

# Called as progress(sequences_done, sequences_total) while a long generate() runs.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions.

    temperature: 0 means greedy (log-prob 0 for every token: the sampled distribution is a point mass).
    top_p: nucleus mass in (0, 1]; 1 disables it.
    top_k: keep the k most likely tokens; 0 disables it.
    max_new_tokens: completion length cap; finish reason "length" when reached.
    n: samples per prompt (the GRPO group size).
    seed: makes generate() reproducible; None draws a seed from torch's global RNG, so a run seeded
        (and checkpointed) through torch stays reproducible too.
    eos_token_ids: any of these ends a completion (finish reason "eos"); empty means length-only.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))


@dataclass
class RolloutResult:
    """One sampled completion.

    token_ids includes the EOS token that stopped it (finish_reason "eos"), because the policy must
    get credit for stopping; ``content_ids`` drops it. A completion whose first token is EOS therefore
    has ``token_ids == [eos]`` and ``content_ids == []``.
    logprobs: fp32 CPU tensor, one sampling log-prob per entry of token_ids (see the module docstring).
    """

    prompt_index: int
    sample_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: torch.Tensor
    finish_reason: FinishReason

    @property
    def content_ids(self) -> list[int]:
        return self.token_ids[:-1] if self.finish_reason == "eos" else self.token_ids


@runtime_checkable
class RolloutEngine(Protocol):
    """A backend that samples completions and receives the trainer's weights."""

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[RolloutResult]:
        """Sample ``params.n`` completions per prompt.

        Returns ``len(prompt_token_ids) * n`` results, prompt-major (the n samples of prompt 0 first),
        so GRPO groups are contiguous.
        """
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (called after each optimizer step)."""
        ...
