"""Resolve a reward function from a name or a ``package.module:function`` import path."""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable

RewardFn = Callable[[str, str], float]  # (completion, ground_truth) -> reward

BUILTIN_REWARDS: dict[str, str] = {
    "math": "occ_fast.rewards.math_answer:math_reward",
    "arithmetic": "occ_fast.rewards.arithmetic:arithmetic_reward",
}


class RewardFnImportError(ImportError):
    """The reward function named in the configuration cannot be loaded."""


def load_reward_fn(spec: str) -> RewardFn:
    """``math``, ``arithmetic`` or ``package.module:function``; errors name the spec and what failed."""
    path = BUILTIN_REWARDS.get(spec, spec)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RewardFnImportError(
            f"reward function {spec!r}: expected one of {sorted(BUILTIN_REWARDS)} or 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise RewardFnImportError(
            f"reward function {spec!r}: cannot import module {module_name!r}: {type(e).__name__}: {e}"
        ) from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise RewardFnImportError(
            f"reward function {spec!r}: module {module_name!r} has no attribute {attr!r}"
        )
    if not callable(fn):
        raise RewardFnImportError(f"reward function {spec!r}: {attr!r} is not callable")
    return fn


def call_reward(fn: RewardFn, completion: str, ground_truth: str) -> float:
    """Run ``fn`` and check it returned a finite number (bools count as 0/1)."""
    value = fn(completion, ground_truth)
    if not isinstance(value, numbers.Real):
        raise TypeError(f"reward function returned {type(value).__name__}, expected a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"reward function returned {value}")
    return value
