"""Ctrl-C and SIGTERM (a scheduler's notice before it kills a job) stop training without losing work.

During start-up a signal abandons the run at once (nothing has been trained yet). Once the loop
runs, the first signal lets the current step finish; the loop then saves a checkpoint of that step
and stops with one line giving the exact command that resumes it. Under torchrun the ranks agree on
that step: each step ends with a max-reduce of "has any rank been signalled". A second signal exits
at once, without saving, unless it arrives within :data:`REPEAT_GRACE_S` of the first: a terminal's
Ctrl-C reaches every process of the job, and torchrun then forwards its own copy to each rank.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as dist

from occ_fast.monitoring.early_interrupt import START_UP_STOP

REPEAT_GRACE_S = 1.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):  # noqa: N818 - a BaseException like KeyboardInterrupt, not an error
    """Training stopped on a signal; ``message`` is the one line to show, ``exit_code`` 128 + signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class GracefulStop:
    """SIGINT/SIGTERM handlers for the life of a ``with`` block (main thread only; elsewhere a no-op).

    ``deferred`` False (start-up): a signal raises :class:`Interrupted` where the program stands.
    ``deferred`` True (the training loop): a signal is only recorded, for :meth:`agreed` to see."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now, name = time.monotonic(), signal.Signals(signum).name
        if self.signum is None:
            self.signum, self._first_at = signum, now
            if not self.deferred:
                raise Interrupted(signum, START_UP_STOP.format(name=name))
            _say(
                f"{name} received: finishing this step, then saving a checkpoint (again: exit at once, unsaved)"
            )
        elif now - self._first_at >= REPEAT_GRACE_S:
            _say(f"second {name}: exiting now without saving")
            os._exit(128 + signum)

    def agreed(self, device: torch.device, *, halted: bool = False) -> tuple[int | None, bool]:
        """The signal that stops the loop after this step (None to go on), and whether any rank
        ``halted`` (met a fault only it sees, such as rank 0's metrics write): the same on every
        rank (one collective under torchrun: every rank calls it once per step)."""
        if not dist.is_initialized():
            return self.signum, halted
        flags = torch.tensor([self.signum or 0, int(halted)], dtype=torch.int64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return int(flags[0].item()) or None, bool(flags[1].item())


def resume_command(config_path: Path, world_size: int) -> str:
    """The command that continues the run whose resolved config is ``config_path``."""
    launcher = "python" if world_size == 1 else f"torchrun --nproc-per-node {world_size}"
    return f"{launcher} -m occ_fast.train --preset {shlex.quote(str(config_path))} --run.resume auto"


def _say(line: str) -> None:
    """Write to stderr from a signal handler (no buffered I/O that the handler may have interrupted)."""
    os.write(2, f"{line}\n".encode())
