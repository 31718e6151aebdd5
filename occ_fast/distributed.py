"""Multi-process training: process group from torchrun's environment, FSDP2 sharding of an
:class:`~occ_fast.model.MTPModel`, and the cross-rank reductions the RL loop needs.

Data parallelism splits a step's prompts (whole groups) across ranks; every rank packs its own
micro-batches. The token-mean loss must still divide by the *global* token count of the
mini-batch (:func:`global_sum`), otherwise each rank's gradient would be scaled by its own share
and the FSDP gradient average would weight tokens unequally. FSDP runs collectives in every
forward and backward, so all ranks must run the same number of micro-batches
(:func:`pad_micro_batches`).

Sharded checkpoints and the Hugging Face export live in :mod:`occ_fast.sharded_checkpoint`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from occ_fast.model import MTPModel
from occ_fast.model.wrapper import decoder_of

logger = logging.getLogger(__name__)

T = TypeVar("T")


class DistributedEnvError(RuntimeError):
    """torchrun's environment variables are missing, malformed or inconsistent."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and the final model."""
        return self.rank == 0


def init_distributed(*, device_type: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group that torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``): NCCL on CUDA (one GPU per local rank), gloo on CPU.

    Without ``WORLD_SIZE`` this is a plain single-process run: no process group is created.
    ``device_type`` defaults to CUDA when available. Calling it again in an initialised process
    checks the environment against the existing group instead of joining twice.
    """
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    env = os.environ
    if "WORLD_SIZE" not in env:
        stray = [name for name in ("RANK", "LOCAL_RANK") if name in env]
        if stray:
            raise DistributedEnvError(
                f"{' and '.join(stray)} set but WORLD_SIZE is not: launch with torchrun, or unset "
                f"{'them' if len(stray) > 1 else 'it'} for a single-process run"
            )
        return DistInfo(0, 1, 0, torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu"))

    world_size, rank, local_rank = (_env_int(name) for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    if world_size < 1:
        raise DistributedEnvError(f"WORLD_SIZE={world_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise DistributedEnvError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    if not 0 <= local_rank <= rank:
        raise DistributedEnvError(f"LOCAL_RANK={local_rank} must lie in [0, RANK={rank}]")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise DistributedEnvError(f"WORLD_SIZE is set but {name} is not: launch with torchrun")
    port = _env_int("MASTER_PORT")
    if not 0 < port < 65536:
        raise DistributedEnvError(f"MASTER_PORT={port} is not a valid port")

    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedEnvError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA device(s): "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"

    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise DistributedEnvError(
                f"a process group already exists as rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but the environment says rank {rank} of {world_size}"
            )
    else:
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if backend == "nccl" else None,
        )
    logger.info("process group: %s, rank %d of %d, device %s", backend, rank, world_size, device)
    return DistInfo(rank, world_size, local_rank, device)


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None:
        raise DistributedEnvError(f"WORLD_SIZE is set but {name} is not: launch with torchrun")
    try:
        return int(raw)
    except ValueError:
        raise DistributedEnvError(f"{name}={raw!r} is not an integer") from None


def shard_model(
    model: MTPModel,
    *,
    mixed_precision: bool,
    reshard_after_forward: bool = True,
    activation_checkpointing: bool = False,
) -> MTPModel:
    """Apply FSDP2 (``fully_shard``) in place: one group per trunk decoder layer, one per MTP depth,
    then the root (the embedding, ``lm_head``, the final norm).

    ``lm_head`` and the embedding stay in the root group, which is never resharded after forward:
    the root's pre-forward hook all-gathers them, :meth:`MTPModel.forward` hands the full
    ``get_output_embeddings().weight`` out in its output, and the fused log-prob kernel that runs
    *after* the forward (and its backward) reads that full tensor; the root reshards and
    reduce-scatters its gradient when backward ends. A tied embedding/``lm_head`` is one parameter
    of that one group. ``reshard_after_forward`` applies to the layer groups only.

    Gradients are *summed* over ranks, not averaged (FSDP's default): each rank's loss is already
    divided by the global token count (:func:`global_sum`), so the sum is the single-process gradient.

    After a no-grad forward (old log-probs) the root stays unsharded until the next backward; call
    ``model.reshard()`` before an optimizer step that is not preceded by a training backward.

    ``mixed_precision``: bf16 parameters in forward/backward, fp32 gradient reduction and fp32
    master weights (keep the model in fp32 and autocast off). ``activation_checkpointing``:
    transformers' own checkpointing of the trunk decoder layers (non-reentrant); transformers
    checkpoints each layer's ``forward``, so FSDP2's hooks on the layer stay outside the recomputed
    region. MTP layers are not checkpointed.
    """
    if not dist.is_initialized():
        raise RuntimeError(
            "shard_model needs a process group: launch with torchrun and call init_distributed()"
        )
    device_type = next(model.parameters()).device.type
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    if activation_checkpointing:
        model.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [*decoder_of(model.base).layers, *model.mtp]
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
    for module in (*layers, model):
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    logger.info(
        "FSDP2 over %d ranks (%s): %d layer groups + root; %s; activation checkpointing %s",
        dist.get_world_size(),
        device_type,
        len(layers),
        "bf16 params / fp32 reduce" if mixed_precision else "fp32",
        "on" if model.base.is_gradient_checkpointing else "off",
    )
    return model


def _comm_device() -> torch.device:
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
    device = _comm_device()
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device, dtype=torch.float32, copy=True)
    else:
        t = torch.tensor(float(x), dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


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
        t = torch.tensor(count, device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        count = int(t)
    pad = micros[-1] if micros else filler
    return [(m, True) for m in micros] + [(pad, False)] * (count - len(micros))


def all_gather_ints(value: int) -> list[int]:
    """Every rank's ``value``, in rank order (``[value]`` in a single process). One host sync."""
    if not dist.is_initialized():
        return [int(value)]
    device = _comm_device()
    gathered = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.tensor(int(value), dtype=torch.int64, device=device))
    return [int(t) for t in gathered]


def global_positions(keys: Sequence[int]) -> list[int]:
    """Where each of this rank's distinct ``keys`` falls in the sorted keys of every rank (in a single
    process, in its own sorted keys): a rank-independent order for work split over ranks. Two host syncs."""
    counts = all_gather_ints(len(keys))
    everything = list(keys)
    if dist.is_initialized():
        device = _comm_device()
        local = torch.full((max(counts),), -1, dtype=torch.int64, device=device)
        local[: len(keys)] = torch.tensor(list(keys), dtype=torch.int64)
        gathered = [torch.empty_like(local) for _ in counts]
        dist.all_gather(gathered, local)
        everything = [int(v) for t, c in zip(gathered, counts) for v in t[:c].tolist()]
    if len(set(everything)) != len(everything):
        raise ValueError("global_positions: keys repeat within or across ranks")
    position = {key: i for i, key in enumerate(sorted(everything))}
    return [position[key] for key in keys]


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def gather_metrics(
    metrics: dict[str, float],
    *,
    sums: Collection[str] = (),
    mins: Collection[str] = (),
    maxs: Collection[str] = (),
) -> dict[str, float]:
    """Per-rank metrics combined over ranks: the mean, or the total for the keys in ``sums``
    (counters), the minimum for ``mins`` and the maximum for ``maxs``.

    A key that only some ranks report is combined over those ranks. Every rank gets the result."""
    if not dist.is_initialized():
        return dict(metrics)
    gathered: list[dict[str, float] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {k: float(v) for k, v in metrics.items()})
    out: dict[str, float] = {}
    for key in sorted({k for m in gathered for k in m}):
        values = [m[key] for m in gathered if key in m]
        if key in sums:
            out[key] = sum(values)
        elif key in mins:
            out[key] = min(values)
        elif key in maxs:
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over ``model``'s parameters, returning the global norm as a plain tensor
    (under FSDP2 it comes back as a replicated DTensor, which the loop's metrics cannot stack)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
