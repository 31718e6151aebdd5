"""Joining the process group torchrun describes, and where this process stands in it."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


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


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def exit_rank(code: int) -> NoReturn:
    """End the process with ``code``; a torchrun rank skips the interpreter's teardown.

    ``destroy_process_group`` leaves gloo's threads running (the FSDP2 device mesh, and with it the
    backend, stays referenced by DTensor state that outlives the run), and destroying them during
    the interpreter's teardown can abort a rank whose run has finished and saved (SIGABRT,
    "terminate called without an active exception"): torchrun then reports the job failed. The run
    has closed its files when this is called; the log handlers and streams are flushed here.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
