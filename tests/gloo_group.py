"""Two gloo ranks on CPU under torchrun, for the test files that are their own torchrun worker
(``test_distributed.py``, ``test_fsdp_units.py``): the module fixture starts the file with
:func:`run_two_ranks`, and its ``__main__`` works inside :func:`gloo_ranks`. One copy of the launch
and teardown, so that every such file starts, times out and reports a failure alike.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist
import warm_python

from occ_fast.distributed.process_group import DistInfo, init_distributed

RANK_ENV = warm_python.RANK_ENV


def run_two_ranks(worker: str, out: Path, timeout_s: float) -> None:
    """``python WORKER OUT`` on 2 ranks under ``torchrun --standalone``, which picks MASTER_ADDR and
    MASTER_PORT itself (none of this process's rank variables reach it), one intra-op thread per rank,
    the ranks started from the session's warm interpreter (``tests/warm_python.py``).
    Fails the test when torchrun exits non-zero, or runs past ``timeout_s`` (then its process group
    is killed), with the end of its standard error."""
    cmd = warm_python.torchrun(2, worker, str(out))
    env = warm_python.environ(os.environ)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's process group
        _, stderr = proc.communicate()
        pytest.fail(f"torchrun worker hung for {timeout_s} s:\n{stderr[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun worker failed ({proc.returncode}):\n{stderr[-6000:]}")


@contextlib.contextmanager
def gloo_ranks(timeout_s: float = 60) -> Iterator[DistInfo]:
    """In a torchrun worker: join the gloo group (``init_distributed`` on CPU) and leave it at the end.
    An exception skips the teardown: the rank exits with its traceback, which torchrun reports."""
    info = init_distributed(device_type="cpu", timeout_s=timeout_s)
    yield info
    dist.destroy_process_group()
