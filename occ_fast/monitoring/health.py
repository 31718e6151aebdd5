"""Run-health stops: a run that can no longer learn ends with one line saying why and what is left,
instead of running to the end and exporting an unusable model."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from occ_fast.checkpointing.files import CHECKPOINTS_SUBDIR, complete_checkpoints, read_meta

logger = logging.getLogger(__name__)


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


@dataclass
class RewardHealth:
    """Reward failures (exceptions and time-outs): warned about at most once per ``warn_every_s``
    with a count, and a stop once the share of a step's samples that fail stays above
    ``max_error_rate`` for ``patience`` steps in a row (``max_error_rate`` 1 never stops)."""

    fn: str
    max_error_rate: float
    patience: int
    warn_every_s: float = 60.0
    bad_steps: int = 0
    unwarned_failures: int = 0
    unwarned_samples: int = 0
    last_failure: str | None = None
    last_warning: float = -math.inf

    def record(self, failures: list[str], samples: int) -> None:
        """One scoring pass: its failure messages and how many samples it scored."""
        self.unwarned_failures += len(failures)
        self.unwarned_samples += samples
        self.last_failure = failures[-1] if failures else self.last_failure

    def end_step(self, step: int, error_rate: float) -> None:
        """Warn if due; raise :class:`TrainingHalted` when the error rate has stayed too high."""
        now = time.monotonic()
        if self.unwarned_failures and now - self.last_warning >= self.warn_every_s:
            logger.warning(
                "step %d: reward.fn=%r failed on %d of %d samples since the last warning (at most one "
                "warning per %.0f s; every step's reward/error_rate is in metrics.jsonl); last: %s",
                step, self.fn, self.unwarned_failures, self.unwarned_samples, self.warn_every_s,
                self.last_failure,
            )  # fmt: skip
            self.unwarned_failures = self.unwarned_samples = 0
            self.last_warning = now
        elif not self.unwarned_failures:
            self.unwarned_samples = 0
        self.bad_steps = self.bad_steps + 1 if error_rate > self.max_error_rate else 0
        if self.max_error_rate < 1.0 and self.bad_steps >= self.patience:
            raise TrainingHalted(
                f"stopping: reward.fn={self.fn!r} failed on {error_rate:.0%} of samples for {self.bad_steps} "
                f"steps in a row (reward.max_error_rate={self.max_error_rate}, reward.error_patience="
                f"{self.patience}); last failure: {self.last_failure}"
            )
