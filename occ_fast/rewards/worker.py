"""Reward worker process: ``python -m occ_fast.rewards.worker READ_FD WRITE_FD PARENT_PID``.

Started by ``WorkerPool`` as a plain subprocess (not multiprocessing's spawn, which would re-import
the trainer's heavy ``__main__`` in every worker). Protocol over two pipes:
parent sends ``(sys_path, spec)``, worker answers ``("ready", None)`` or ``("fatal", msg)``;
then per item parent sends ``(index, completion, ground_truth)``, worker answers
``(index, "ok", reward)`` or ``(index, "error", msg)``; ``None`` or EOF stops the worker.

A worker dies with its parent (:func:`die_with_parent`), however the parent ends.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from multiprocessing.connection import Connection

from occ_fast.rewards.loader import call_reward, load_reward_fn

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux), and exit now if it already has.

    A worker busy with a hung reward never reads the closed pipe and ignores SIGINT and SIGTERM
    (:func:`serve`), so a trainer killed by SIGKILL (a scheduler, the OOM killer) would leave it
    running under init on every node. The parent may die before this call: the check of the parent
    pid after it closes that gap. The signal follows the parent *thread* that started the worker:
    ``WorkerPool`` starts workers from the threads that create it and score (the trainer's main
    thread), which must outlive them. On other systems only an idle worker stops, at the pipe's EOF.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def serve(inbox: Connection, outbox: Connection) -> None:
    """Score items until told to stop; exceptions of the reward function are reported, not raised."""
    # A terminal's Ctrl-C (and a scheduler's SIGTERM to the job) reaches the workers too: the trainer
    # finishes its step with them, then stops them; they also exit when its end of the pipe closes.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys_path, spec = inbox.recv()
    sys.path[:] = sys_path  # the parent's path, so functions importable there import here too
    try:
        fn = load_reward_fn(spec)
    except Exception as e:
        outbox.send(("fatal", str(e)))
        return
    outbox.send(("ready", None))
    while True:
        try:
            message = inbox.recv()
        except EOFError:
            return
        if message is None:
            return
        index, completion, ground_truth = message
        try:
            outbox.send((index, "ok", call_reward(fn, completion, ground_truth)))
        except Exception as e:
            outbox.send((index, "error", f"{type(e).__name__}: {e}"))


if __name__ == "__main__":
    die_with_parent(int(sys.argv[3]))
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
