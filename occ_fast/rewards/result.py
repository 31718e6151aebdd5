"""What a reward pass returns: one reward per completion plus counts of the items that failed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RewardResult:
    """Rewards in input order; a timed-out or failing item scores 0 and is counted, never raised."""

    rewards: list[float]
    num_timeouts: int = 0
    num_errors: int = 0
    errors: list[str] = field(default_factory=list)  # "item i: <what happened>", for the log
