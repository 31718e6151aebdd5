"""A warning that can come up every step, said at most once a minute with how often it came up:
a condition that holds for most of a long run (dynamic sampling falling short) would otherwise bury
the log in one line per step, while its per-step figure is in ``metrics.jsonl`` anyway."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ThrottledWarning:
    logger: logging.Logger
    every_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    unsaid: int = 0
    last: float = field(default=-math.inf)

    def __call__(self, message: str, *args: object) -> None:
        """Count this occurrence; log ``message % args`` if none was logged in the last ``every_s``."""
        self.unsaid += 1
        now = self.clock()
        if now - self.last < self.every_s:
            return
        since = "" if self.unsaid == 1 else f"{self.unsaid} times since the last such warning; "
        self.logger.warning(f"{message} ({since}said at most once per {self.every_s:.0f} s)", *args)
        self.unsaid, self.last = 0, now
