"""Rewards: math answers (math-verify), the synthetic arithmetic checker, user functions, time limits."""

from occ_fast.rewards.arithmetic import arithmetic_reward, extract_integer_answer
from occ_fast.rewards.loader import BUILTIN_REWARDS, RewardFn, RewardFnImportError, load_reward_fn
from occ_fast.rewards.result import RewardResult
from occ_fast.rewards.scorer import RewardScorer

__all__ = [
    "BUILTIN_REWARDS",
    "RewardFn",
    "RewardFnImportError",
    "RewardResult",
    "RewardScorer",
    "arithmetic_reward",
    "extract_integer_answer",
    "load_reward_fn",
]
