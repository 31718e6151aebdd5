"""A reward an untrained model earns about half the time, so that RL steps in tests carry signal.

The arithmetic reward gives a random-init model 0 on every completion (zero advantages, zero loss,
zero gradient). This rule depends only on the sampled text, so groups of sampled completions have
reward variance from the first step, with no warm-start. Loaded by ``--reward.fn
signal_reward:digit_parity`` (``tests/`` is on the path under pytest; torchrun runs add it).
"""

from __future__ import annotations


def digit_parity(completion: str, ground_truth: str) -> float:
    """1 when the completion holds an odd number of digits, else 0."""
    return float(sum(c.isdigit() for c in completion) % 2)
