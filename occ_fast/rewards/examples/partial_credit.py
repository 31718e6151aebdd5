"""An example reward function: ``--reward.fn occ_fast.rewards.examples.partial_credit:reward``.

A reward function is called once per sampled completion as ``fn(completion, ground_truth)``, both
strings (the completion's text after the prompt, the row's answer as text), and returns a finite
number; an exception, a non-number or a time-out scores 0 and is counted in ``reward/error_rate``.
Unlike the built-in 0/1 ``arithmetic`` reward, this one gives partial credit to a near miss, so
``reward/mean`` falls below ``reward/accuracy`` (the share of samples rewarded above 0).
"""

from __future__ import annotations

import re

_INTEGER = re.compile(r"-?\d+")


def reward(completion: str, ground_truth: str) -> float:
    """1 when the completion's first integer is the answer, else the share of digit places it gets
    right counted from the units digit (``72`` for ``73``: 1/2), 0 when there is no integer."""
    match = _INTEGER.search(completion)
    if match is None:
        return 0
    got, want = match.group(), ground_truth.strip()
    if int(got) == int(want):
        return 1
    right = sum(g == w for g, w in zip(reversed(got), reversed(want)))
    return right / max(len(got), len(want))
