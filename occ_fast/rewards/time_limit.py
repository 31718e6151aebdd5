"""The per-item time limit for in-process scoring (``reward.num_workers`` 0).

A ``SIGALRM`` interval timer interrupts the reward function where it stands. That stops Python code
(loops, sleeps, pure-Python sympy), not a hang inside one C call (a regex blow-up): such functions
need worker processes, which are killed instead. Signals reach the main thread only, so elsewhere the
limit cannot hold and :func:`time_limit` says so instead of silently running unbounded.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RewardTimeout(BaseException):  # noqa: N818 - a BaseException so `except Exception` cannot swallow it
    """The reward function ran past its time limit."""


def _expire(signum: int, frame: object) -> None:
    raise RewardTimeout


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`RewardTimeout` in the block once ``seconds`` of wall-clock time have passed."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "in-process reward scoring (num_workers 0) enforces its time limit with SIGALRM, which needs "
            "the main thread: score from the main thread, or use reward worker processes"
        )
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
