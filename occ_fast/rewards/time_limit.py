"""The per-item time limit for in-process scoring (``reward.num_workers`` 0).

A ``SIGALRM`` interval timer interrupts the reward function where it stands. That stops Python code
(loops, sleeps, pure-Python sympy), not a hang inside one C call (a regex blow-up): such functions
need worker processes, which are killed instead. Signals reach the main thread only, so elsewhere the
limit cannot hold: :func:`time_limit` then warns once and runs the function unbounded.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)
_warned_off_main_thread = threading.Event()


class RewardTimeout(BaseException):  # noqa: N818 - a BaseException so `except Exception` cannot swallow it
    """The reward function ran past its time limit."""


def _expire(signum: int, frame: object) -> None:
    raise RewardTimeout


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`RewardTimeout` in the block once ``seconds`` of wall-clock time have passed."""
    if threading.current_thread() is not threading.main_thread():
        if not _warned_off_main_thread.is_set():
            _warned_off_main_thread.set()
            logger.warning(
                "in-process reward scoring off the main thread runs without its time limit (SIGALRM "
                "reaches the main thread only): use reward worker processes for a limit there"
            )
        yield
        return
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
