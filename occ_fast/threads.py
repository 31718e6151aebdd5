"""CPU thread policy of every process the trainer runs: intra-op threads and how idle threads wait.

On a CPU shared with other processes (torchrun ranks on one node, reward workers, anyone else's
job), OpenMP's default lets idle worker threads spin for a while before sleeping; each spinning
thread takes a core from the others, and a 2-core run beside one busy process went from 36 s to
120 s that way. The policy:

- ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep) unless the variable is already set. OpenMP
  reads it once, when torch loads it, so :func:`set_wait_policy` runs on ``import occ_fast``:
  every entry point (``python -m occ_fast.train``, ``.eval``, ...) imports the package before torch.
- Intra-op threads per process: the cores this process may run on (its CPU affinity) divided by
  the processes of this node that compute at the same time (``LOCAL_WORLD_SIZE`` under torchrun,
  else 1), at least 1. ``OMP_NUM_THREADS`` set by the user wins.
- Reward workers: one thread each (they run while the trainer waits for their scores).
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def set_wait_policy(environ: MutableMapping[str, str] = os.environ) -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user chose otherwise."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; all of them where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_processes(environ: MutableMapping[str, str] = os.environ) -> int:
    """Processes of this node computing at once: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    value = environ.get("LOCAL_WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"LOCAL_WORLD_SIZE must be a positive integer, got {value!r}")
    return int(value)


def intra_op_threads(cores: int, processes: int) -> int:
    """An equal share of the cores for each local process, at least one thread."""
    return max(1, cores // max(1, processes))


def apply(environ: MutableMapping[str, str] = os.environ) -> int:
    """Set this process's intra-op threads by the policy (unless ``OMP_NUM_THREADS`` is set); return them."""
    import torch

    if "OMP_NUM_THREADS" in environ:
        threads = torch.get_num_threads()
        logger.info("CPU threads: %d (OMP_NUM_THREADS set)", threads)
        return threads
    threads = intra_op_threads(usable_cores(), local_processes(environ))
    torch.set_num_threads(threads)
    logger.info(
        "CPU threads: %d (%d usable cores, %d local processes, OMP_WAIT_POLICY=%s)",
        threads,
        usable_cores(),
        local_processes(environ),
        environ.get("OMP_WAIT_POLICY", "unset"),
    )
    return threads
