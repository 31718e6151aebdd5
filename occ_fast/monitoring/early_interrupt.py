"""Ctrl-C while ``python -m occ_fast.train`` is still importing (seconds of torch and transformers).

Python's own handler would raise KeyboardInterrupt inside whichever import was running, and the
user would get a traceback where the docs promise one line. Nothing has been written at that point,
so the handler says so and exits with 128 + the signal, as a stop during start-up does once
:class:`occ_fast.monitoring.interrupt.GracefulStop` takes over. This module imports only the
standard library, so that the handler is in place before the heavy imports begin.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

START_UP_STOP = "interrupted ({name}) during start-up: no step was trained; rerun the same command to start"


def exit_at_once_on_sigint() -> None:
    """From now until another handler replaces it, SIGINT prints one line and exits (130)."""
    signal.signal(signal.SIGINT, _exit)


def _exit(signum: int, frame: FrameType | None) -> None:
    os.write(2, f"{START_UP_STOP.format(name=signal.Signals(signum).name)}\n".encode())
    os._exit(128 + signum)
