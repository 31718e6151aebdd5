"""Answers a built-in reward cannot read are refused when the data loads, not scored 0 every step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from occ_fast.data import DatasetError, PromptRecord
from occ_fast.rewards.arithmetic import check_ground_truth

# Cheap per-answer checks of the built-in rewards; 'math' accepts any string (math-verify's parse of
# a ground truth costs milliseconds: a failure there shows in the reward error rate instead).
ANSWER_CHECKS: dict[str, Callable[[str], None]] = {"arithmetic": check_ground_truth}


def check_answers(reward_fn: str, records: Sequence[PromptRecord]) -> None:
    """Raise :class:`DatasetError` naming the first answer ``reward_fn`` cannot read, and how many."""
    check = ANSWER_CHECKS.get(reward_fn)
    if check is None:
        return
    bad = []
    for record in records:
        try:
            check(record.answer)
        except ValueError as e:
            bad.append((record, e))
    if bad:
        first, error = bad[0]
        raise DatasetError(
            f"{first.source}: reward.fn={reward_fn!r} cannot read answer {first.answer!r} ({error}); "
            f"{len(bad)} of {len(records)} answers are like it: fix the data or choose another reward.fn"
        )
