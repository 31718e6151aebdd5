"""Exact checker for the built-in synthetic arithmetic task (occ_fast.data.synthetic)."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\{\s*([^{}]*?)\s*\}")
_INTEGER = re.compile(r"-?\d+")


def extract_integer_answer(completion: str) -> int | None:
    """The last ``\\boxed{N}`` if there is one, else the first integer of the completion.

    The task's prompt ends with ``=``, so a completion starts with its answer; a chain-of-thought
    style answer is expected in ``\\boxed{}``.
    """
    boxed = _BOXED.findall(completion)
    if boxed:
        content = boxed[-1].replace(" ", "")
        return int(content) if _INTEGER.fullmatch(content) else None
    match = _INTEGER.search(completion)
    return int(match.group()) if match else None


def check_ground_truth(ground_truth: str) -> None:
    """Raise ValueError unless ``ground_truth`` is an integer (``7``, not ``7.0``)."""
    if not _INTEGER.fullmatch(ground_truth.strip()):
        raise ValueError(f"arithmetic ground truth must be an integer, got {ground_truth!r}")


def arithmetic_reward(completion: str, ground_truth: str) -> float:
    """1.0 when the extracted integer equals the ground truth exactly, else 0.0."""
    check_ground_truth(ground_truth)
    return float(extract_integer_answer(completion) == int(ground_truth))
