"""Run-health stops: a run that can no longer learn ends with one line saying why and what is left,
instead of running to the end and exporting an unusable model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from occ_fast.checkpoint_files import CHECKPOINTS_SUBDIR, complete_checkpoints, read_meta


class TrainingHalted(RuntimeError):
    """The run stopped itself: its message is the one line to show."""


@dataclass
class NonFiniteGuard:
    """Counts optimizer updates skipped for a non-finite gradient norm in a row, across RL steps.

    ``limit`` 0 never stops. The streak's first step tells which checkpoints predate the trouble."""

    limit: int
    streak: int = 0
    streak_start: int | None = None  # RL step of the streak's first skipped update

    def observe(self, step: int, finite: list[bool]) -> None:
        """Record one RL step's optimizer updates, in order (True: applied, False: skipped)."""
        for ok in finite:
            if ok:
                self.streak, self.streak_start = 0, None
            else:
                self.streak_start = step if self.streak == 0 else self.streak_start
                self.streak += 1

    def check(self, run_dir: Path) -> None:
        """Raise :class:`TrainingHalted` once ``limit`` updates in a row were skipped."""
        if not self.limit or self.streak < self.limit:
            return
        good = [
            c
            for c in complete_checkpoints(run_dir / CHECKPOINTS_SUBDIR)
            if read_meta(c)["step"] < self.streak_start
        ]
        last_good = (
            f"the last good checkpoint is {good[-1]} (resume from it with --run.resume PATH and, e.g., a lower --optim.lr)"
            if good
            else "no checkpoint predates them: start again, e.g. with a lower --optim.lr"
        )
        raise TrainingHalted(
            f"stopping: {self.streak} optimizer updates in a row had a non-finite gradient norm (since "
            f"step {self.streak_start}; optim.max_nonfinite_updates={self.limit}); {last_good}"
        )
