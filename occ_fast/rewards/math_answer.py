"""Math answer checking with math-verify (boxed answers and plain final answers).

math-verify's own time limit relies on ``signal.alarm`` and only works in a main thread, so it is
switched off here: the reward worker pool enforces the per-item limit by killing the worker.
"""

from __future__ import annotations

import logging

from math_verify import parse, verify

# With its timeouts off, math-verify warns once per process that the caller must enforce them: we do.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def math_reward(completion: str, ground_truth: str) -> float:
    """1.0 if the completion's final answer (``\\boxed{}`` first, else the last expression) matches."""
    gold = parse("\\boxed{" + ground_truth + "}", parsing_timeout=None)
    if not gold:
        raise ValueError(f"math-verify cannot parse the ground truth {ground_truth!r}")
    answer = parse(completion, parsing_timeout=None)
    return float(verify(gold, answer, timeout_seconds=None))
