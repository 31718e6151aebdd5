"""Reward worker process: ``python -m occ_fast.rewards.worker READ_FD WRITE_FD``.

Started by ``WorkerPool`` as a plain subprocess (not multiprocessing's spawn, which would re-import
the trainer's heavy ``__main__`` in every worker). Protocol over two pipes:
parent sends ``(sys_path, spec)``, worker answers ``("ready", None)`` or ``("fatal", msg)``;
then per item parent sends ``(index, completion, ground_truth)``, worker answers
``(index, "ok", reward)`` or ``(index, "error", msg)``; ``None`` or EOF stops the worker.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection

from occ_fast.rewards.loader import call_reward, load_reward_fn


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
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
