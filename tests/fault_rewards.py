"""Reward functions that misbehave on purpose, for the fault tests (importable as ``fault_rewards``)."""

from __future__ import annotations

import os
import time

from occ_fast.rewards.arithmetic import arithmetic_reward


def always_fails(completion: str, ground_truth: str) -> float:
    raise RuntimeError("this reward fails on every sample")


_calls = {"n": 0}


def hang_after_calls(completion: str, ground_truth: str) -> float:
    """The arithmetic reward for the first ``$FAULT_HANG_AFTER`` calls; then it creates the file
    ``$FAULT_HANG_FLAG`` (so a test knows) and hangs."""
    _calls["n"] += 1
    if _calls["n"] > int(os.environ["FAULT_HANG_AFTER"]):
        open(os.environ["FAULT_HANG_FLAG"], "w").close()  # noqa: SIM115
        time.sleep(3600)
    return arithmetic_reward(completion, ground_truth)


def pause_after_calls(completion: str, ground_truth: str) -> float:
    """The arithmetic reward; after ``$FAULT_PAUSE_AFTER`` calls it creates ``$FAULT_PAUSE_FLAG`` and
    waits (at most 120 s) until ``$FAULT_RELEASE_FLAG`` exists: a step held open until a test lets it end."""
    _calls["n"] += 1
    if _calls["n"] > int(os.environ["FAULT_PAUSE_AFTER"]):
        open(os.environ["FAULT_PAUSE_FLAG"], "w").close()  # noqa: SIM115
        deadline = time.monotonic() + 120
        while not os.path.exists(os.environ["FAULT_RELEASE_FLAG"]) and time.monotonic() < deadline:
            time.sleep(0.02)
    return arithmetic_reward(completion, ground_truth)


def slow_on_odd_answers(completion: str, ground_truth: str) -> float:
    """Takes 5 s when the ground truth is odd (a reward that hangs on some inputs)."""
    if int(ground_truth) % 2:
        time.sleep(5.0)
    return arithmetic_reward(completion, ground_truth)


def has_digit(completion: str, ground_truth: str) -> float:
    """1 when the completion holds a digit: a reward that a random-init model earns on some of its
    samples, so that its groups have a learning signal from the first step."""
    return float(any(c.isdigit() for c in completion))
