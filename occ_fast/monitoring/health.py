"""Run-health stops: a run that can no longer learn ends with one line saying why and what is left,
instead of running to the end and exporting an unusable model."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occ_fast.checkpointing.files import CHECKPOINTS_SUBDIR, complete_checkpoints, last_healthy, read_meta

if TYPE_CHECKING:
    from occ_fast.config import OptimConfig

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

    def check(self, run_dir: Path, suspect_from: int | None) -> None:
        """Raise :class:`TrainingHalted` once ``limit`` updates in a row were skipped, naming the last
        checkpoint from before the run turned unhealthy (``suspect_from``, see :class:`PolicyHealth`)."""
        if not self.limit or self.streak < self.limit:
            return
        before = self.streak_start if suspect_from is None else min(self.streak_start, suspect_from)
        raise TrainingHalted(
            f"stopping: {self.streak} optimizer updates in a row had a non-finite gradient norm (since "
            f"step {self.streak_start}; optim.max_nonfinite_updates={self.limit}); {last_good(run_dir, before)}"
        )


def last_good(run_dir: Path, before: int) -> str:
    """Which checkpoint to resume from: the newest saved while the run was healthy, before step ``before``."""
    good = last_healthy(complete_checkpoints(run_dir / CHECKPOINTS_SUBDIR), before)
    if good is None:
        return "no checkpoint was saved while the run was healthy: start again, e.g. with a lower --optim.lr"
    return f"the last good checkpoint is {good} (resume from it with --run.resume PATH and, e.g., a lower --optim.lr)"


@dataclass
class PolicyHealth:
    """Judges every RL step, so that a checkpoint saved while the run is in doubt never pushes out the
    last one saved while it was healthy (keep_last alone pruned it, and the stop then named a ruined
    one or none), and so that a collapsed policy is reported rather than trained to the end.

    A step is in doubt when an update was non-finite (skipped), when its updates grew the weights'
    norm by more than ``max_update_ratio`` of it (an update far larger than the weights), or when its
    reward and gradient norm are both 0 after a healthy step (the policy lost its learning signal;
    ``collapse_steps`` such steps in a row are a collapse). A run without a healthy step yet has no
    healthy weights to lose, so its zero steps are no doubt. ``suspect_from`` is the first step whose
    checkpoint is in doubt: the step itself for an update, the step before the zero steps for a
    collapse (its weights drew them). A healthy step lifts the doubt. Every checkpoint records the
    judgement (:meth:`record`), and a resumed run goes on from it (:meth:`for_run`)."""

    collapse_steps: int
    max_update_ratio: float
    stop_on_collapse: bool
    zero_steps: int = 0  # steps in a row with reward and gradient norm 0
    healthy_seen: bool = False
    suspect_from: int | None = None
    reason: str = ""

    @classmethod
    def for_run(cls, optim: OptimConfig, checkpoint: Path | None) -> PolicyHealth:
        """The judge of a run configured by ``optim``, resumed from ``checkpoint`` when not None."""
        record = dict(read_meta(checkpoint).get("health", {})) if checkpoint is not None else {}
        record.pop("healthy", None)
        return cls(optim.collapse_steps, optim.max_update_ratio, optim.stop_on_collapse, **record)

    def end_step(self, step: int, metrics: Mapping[str, float], run_dir: Path) -> None:
        """Judge ``step``; on a collapse warn once, or raise :class:`TrainingHalted` (stop_on_collapse)."""
        zero = metrics["reward/mean"] == 0 and metrics.get("optim/grad_norm") == 0
        self.zero_steps = self.zero_steps + 1 if zero else 0
        ratio = metrics["optim/update_ratio"]
        doubts = []
        if metrics["optim/nan_skipped"]:
            doubts.append((step, "a non-finite update"))
        if not ratio <= self.max_update_ratio:  # NaN too
            doubts.append((step, f"an update at least {ratio:.3g} times the weights' norm"))
        if zero and self.healthy_seen:
            doubts.append((step - self.zero_steps, "reward and gradient norm 0"))
        if doubts and (self.suspect_from is None or min(doubts)[0] < self.suspect_from):
            self.suspect_from, self.reason = min(doubts)
        elif not doubts and not zero:
            self.suspect_from, self.reason, self.healthy_seen = None, "", True
        if self.collapse_steps and self.healthy_seen and self.zero_steps == self.collapse_steps:
            collapse = (
                f"the policy has collapsed: reward and gradient norm 0 for {self.zero_steps} steps in a row "
                f"(since step {step - self.zero_steps + 1}; optim.collapse_steps={self.collapse_steps}); "
                + last_good(run_dir, self.suspect_from)
            )
            if self.stop_on_collapse:
                raise TrainingHalted(f"stopping: {collapse}")
            logger.warning("step %d: %s; --optim.stop-on-collapse stops the run here", step, collapse)

    def record(self) -> dict[str, Any]:
        """The judgement a checkpoint saved now keeps in its ``meta.json``: ``healthy`` and
        ``suspect_from`` for pruning (:func:`occ_fast.checkpointing.files.last_healthy`), the rest so
        that a run resumed from it judges as an uninterrupted one would."""
        return {
            "healthy": self.suspect_from is None,
            "suspect_from": self.suspect_from,
            "reason": self.reason,
            "zero_steps": self.zero_steps,
            "healthy_seen": self.healthy_seen,
        }


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
