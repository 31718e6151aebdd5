"""How a step's work splits over ranks so that data parallelism leaves the algorithm unchanged:
each rank's share of the prompts, a rank-independent order of the groups, and equal micro-batch
counts on every rank (FSDP's forward and backward are collectives all ranks must join)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from occ_fast.distributed.collectives import all_gather_ints, comm_device

T = TypeVar("T")


def shard_prompts(indices: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's contiguous share of a step's prompt indices (each prompt is one whole group).

    Shares differ by at most one prompt when the count does not divide evenly; the global token
    normaliser keeps the loss exact either way."""
    if not 0 <= rank < world_size:
        raise ValueError(f"shard_prompts: rank {rank} is outside [0, {world_size})")
    if len(indices) < world_size:
        raise ValueError(f"shard_prompts: {len(indices)} prompts cannot give each of {world_size} ranks one")
    per, extra = divmod(len(indices), world_size)
    start = rank * per + min(rank, extra)
    return list(indices[start : start + per + (rank < extra)])


def pad_micro_batches(micros: Sequence[T], filler: T | None = None) -> list[tuple[T, bool]]:
    """``micros`` as ``(micro, is_real)``, padded with repeats of the last one (of ``filler`` when this
    rank has none) up to the largest count of any rank, because every FSDP forward/backward is a
    collective that all ranks must join. Scale a padding micro-batch's loss by 0 and leave it out of
    metrics. One host sync."""
    if not micros and filler is None:
        raise ValueError("pad_micro_batches: no micro-batches and no filler")
    count = len(micros)
    if dist.is_initialized():
        t = torch.tensor(count, device=comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        count = int(t)
    pad = micros[-1] if micros else filler
    return [(m, True) for m in micros] + [(pad, False)] * (count - len(micros))


def global_positions(keys: Sequence[int]) -> list[int]:
    """Where each of this rank's distinct ``keys`` falls in the sorted keys of every rank (in a single
    process, in its own sorted keys): a rank-independent order for work split over ranks. Two host syncs."""
    counts = all_gather_ints(len(keys))
    everything = list(keys)
    if dist.is_initialized():
        device = comm_device()
        local = torch.full((max(counts),), -1, dtype=torch.int64, device=device)
        local[: len(keys)] = torch.tensor(list(keys), dtype=torch.int64)
        gathered = [torch.empty_like(local) for _ in counts]
        dist.all_gather(gathered, local)
        everything = [int(v) for t, c in zip(gathered, counts) for v in t[:c].tolist()]
    if len(set(everything)) != len(everything):
        raise ValueError("global_positions: keys repeat within or across ranks")
    position = {key: i for i, key in enumerate(sorted(everything))}
    return [position[key] for key in keys]
