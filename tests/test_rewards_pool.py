"""Worker-pool scoring: these functions are imported by path inside the worker processes."""

import math
import os
import time

import pytest

from occ_fast.rewards import RewardScorer

SPEC = f"{__name__}:misbehaving_reward"


def misbehaving_reward(completion: str, ground_truth: str) -> float:
    if completion == "hang":
        time.sleep(60)
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "nan":
        return math.nan
    if completion == "text":
        return "1.0"  # type: ignore[return-value]
    if completion == "exit":
        os._exit(3)
    return float(completion == ground_truth)


def test_hanging_raising_and_crashing_functions_score_zero_and_are_counted():
    items = ["a", "hang", "raise", "a", "nan", "text", "exit", "b", "a"]
    start = time.monotonic()
    with RewardScorer(SPEC, num_workers=2, timeout_s=1.0) as scorer:
        result = scorer.score(items, ["a"] * len(items))
        again = scorer.score(["a", "b"], ["a", "a"])  # the pool keeps working after replacing workers
    assert result.rewards == [1.0, 0, 0, 1.0, 0, 0, 0, 0, 1.0]
    assert result.num_timeouts == 1
    assert result.num_errors == 4
    assert any("item 2: RuntimeError: boom" in e for e in result.errors)
    assert any("item 6: reward worker exited (code 3)" in e for e in result.errors)
    assert again.rewards == [1.0, 0.0] and again.num_errors == again.num_timeouts == 0
    assert time.monotonic() - start < 15


def test_math_through_the_pool():
    with RewardScorer("math", num_workers=1, timeout_s=20.0) as scorer:
        result = scorer.score(["so \\boxed{\\frac{1}{2}}", "it is 3"], ["0.5", "4"])
    assert result.rewards == [1.0, 0.0]


def test_mismatched_lengths_are_rejected():
    with (
        RewardScorer("arithmetic", num_workers=0) as scorer,
        pytest.raises(ValueError, match="2 completions"),
    ):
        scorer.score(["1", "2"], ["1"])
