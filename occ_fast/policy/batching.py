"""Rollout samples to training micro-batches: packed by a token budget, or padded by count.

Packed (the default): each micro-batch is one row holding whole sequences back to back up to
``micro_batch_tokens`` tokens, position ids restarting at every sequence, so no compute goes to
padding; the model keeps attention (and the MTP heads) inside each sequence. Padded: a fixed
number of sequences per micro-batch, right-padded. Both give the same per-token log-probs.

Per-token values (advantages, rollout log-probs) travel in ``[rows, T]`` tensors aligned with
``input_ids``; the trainer gathers them at the scored tokens with the model's ``token_index``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch


@dataclass
class Sample:
    """One rollout: prompt and response token ids, with what the loss needs per response token."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: torch.Tensor  # [R] fp32, the engine's sampling log-probs
    advantage: float

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    def mtp_rows(self, depth: int) -> int:
        """Response tokens that MTP depth ``depth`` can score: token j needs row ``j - 1 - depth >= 0``."""
        start = len(self.prompt_ids)
        return sum(1 for j in range(start, start + len(self.response_ids)) if j >= depth + 1)


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [rows, T] long
    position_ids: torch.Tensor  # [rows, T] long, restarting at 0 for every sequence
    attention_mask: torch.Tensor  # [rows, T] long, 0 on padding
    response_mask: torch.Tensor  # [rows, T] bool, the scored tokens
    advantages: torch.Tensor  # [rows, T] fp32
    rollout_logprobs: torch.Tensor  # [rows, T] fp32
    num_samples: int

    def to(self, device: torch.device) -> MicroBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return MicroBatch(**moved)


def make_micro_batches(
    samples: Sequence[Sample], *, token_budget: int, batch_size: int | None = None, pad_id: int = 0
) -> list[MicroBatch]:
    """Split ``samples`` into micro-batches: fixed ``batch_size`` (padded) if given, else packed rows.

    Packing is first-fit decreasing by length; a sequence longer than the budget gets a row of its own.
    """
    if not samples:
        raise ValueError("make_micro_batches: no samples")
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        groups = [list(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
        return [_padded(group, pad_id) for group in groups]
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    bins: list[list[Sample]] = []
    loads: list[int] = []
    for sample in sorted(samples, key=lambda s: s.length, reverse=True):
        for i, load in enumerate(loads):
            if load + sample.length <= token_budget:
                bins[i].append(sample)
                loads[i] += sample.length
                break
        else:
            bins.append([sample])
            loads.append(sample.length)
    return [_packed(group) for group in bins]


def _packed(samples: list[Sample]) -> MicroBatch:
    ids, pos, resp, adv, lps = [], [], [], [], []
    for s in samples:
        ids += s.prompt_ids + s.response_ids
        pos += list(range(s.length))
        resp += [False] * len(s.prompt_ids) + [True] * len(s.response_ids)
        adv += [s.advantage] * s.length
        lps += [0.0] * len(s.prompt_ids) + s.rollout_logprobs.tolist()
    row = lambda values, dtype: torch.tensor([values], dtype=dtype)  # noqa: E731
    return MicroBatch(
        input_ids=row(ids, torch.long),
        position_ids=row(pos, torch.long),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        response_mask=row(resp, torch.bool),
        advantages=row(adv, torch.float32),
        rollout_logprobs=row(lps, torch.float32),
        num_samples=len(samples),
    )


def _padded(samples: list[Sample], pad_id: int) -> MicroBatch:
    width = max(s.length for s in samples)
    shape = (len(samples), width)
    batch = MicroBatch(
        input_ids=torch.full(shape, pad_id, dtype=torch.long),
        position_ids=torch.arange(width).repeat(len(samples), 1),
        attention_mask=torch.zeros(shape, dtype=torch.long),
        response_mask=torch.zeros(shape, dtype=torch.bool),
        advantages=torch.zeros(shape),
        rollout_logprobs=torch.zeros(shape),
        num_samples=len(samples),
    )
    for b, s in enumerate(samples):
        p, n = len(s.prompt_ids), s.length
        batch.input_ids[b, :n] = torch.tensor(s.prompt_ids + s.response_ids)
        batch.attention_mask[b, :n] = 1
        batch.response_mask[b, p:n] = True
        batch.advantages[b, :n] = s.advantage
        batch.rollout_logprobs[b, p:n] = s.rollout_logprobs
    return batch
