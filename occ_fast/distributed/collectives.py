"""The cross-rank reductions the RL loop needs; each one is the identity in a single process."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
import torch.distributed as dist


def comm_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU tensors."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def global_sum(x: float | torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks as an fp32 tensor on the communication device (``x`` itself in a
    single process). An all-reduce queued without a host sync, so a count can feed the loss
    normaliser inside the step."""
    if not dist.is_initialized():
        return torch.as_tensor(x, dtype=torch.float32).detach().clone()
    device = comm_device()
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device, dtype=torch.float32, copy=True)
    else:
        t = torch.tensor(float(x), dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_ints(value: int) -> list[int]:
    """Every rank's ``value``, in rank order (``[value]`` in a single process). One host sync."""
    if not dist.is_initialized():
        return [int(value)]
    device = comm_device()
    gathered = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.tensor(int(value), dtype=torch.int64, device=device))
    return [int(t) for t in gathered]


def gather_metrics(
    metrics: dict[str, float],
    *,
    sums: Collection[str] = (),
    mins: Collection[str] = (),
    maxs: Collection[str] = (),
    weights: Mapping[str, float] = {},
) -> dict[str, float]:
    """Per-rank metrics combined over ranks: the mean, or the total for the keys in ``sums``
    (counters), the minimum for ``mins``, the maximum for ``maxs``, and for the keys in ``weights``
    the mean weighted by this rank's weight (a token mean weighted by the rank's token count is the
    token mean over every rank's tokens; ranks rarely hold equally many).

    A key that only some ranks report is combined over those ranks. Every rank gets the result."""
    if not dist.is_initialized():
        return dict(metrics)
    gathered: list[tuple[dict[str, float], dict[str, float]] | None] = [None] * dist.get_world_size()
    mine = {k: float(v) for k, v in metrics.items()}
    dist.all_gather_object(gathered, (mine, {k: float(weights[k]) for k in mine if k in weights}))
    out: dict[str, float] = {}
    for key in sorted({k for m, _ in gathered for k in m}):
        values = [m[key] for m, _ in gathered if key in m]
        weighted = [(m[key], w[key]) for m, w in gathered if w.get(key, 0.0) > 0]  # skip empty ranks
        if weighted:
            out[key] = sum(v * w for v, w in weighted) / sum(w for _, w in weighted)
        elif key in sums:
            out[key] = sum(values)
        elif key in mins:
            out[key] = min(values)
        elif key in maxs:
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out
