"""Score completions against ground truths with a configurable reward function, never crashing the run."""

from __future__ import annotations

from collections.abc import Sequence

from occ_fast.rewards.loader import call_reward, load_reward_fn
from occ_fast.rewards.pool import WorkerPool
from occ_fast.rewards.result import RewardResult
from occ_fast.rewards.time_limit import RewardTimeout, time_limit


class RewardScorer:
    """Reward function ``fn`` (``math``, ``arithmetic`` or ``package.module:function``) over a batch.

    With ``num_workers >= 1`` every item runs in a worker process under a ``timeout_s`` wall-clock
    limit (hung workers are killed and replaced). ``num_workers = 0`` runs in this process, for
    trusted fast functions such as ``arithmetic``, under the same limit where a signal can enforce it
    (:mod:`occ_fast.rewards.time_limit`: the main thread, Python code); exceptions are caught.
    Use as a context manager, or call ``close()``, to stop the workers.
    """

    def __init__(self, fn: str = "math", num_workers: int = 4, timeout_s: float = 10.0) -> None:
        if num_workers < 0:
            raise ValueError(f"RewardScorer num_workers must be >= 0, got {num_workers}")
        self._fn = load_reward_fn(fn)  # import errors surface here, in the caller, with the spec named
        self._pool = WorkerPool(fn, num_workers, timeout_s) if num_workers else None
        self._timeout_s = timeout_s

    def score(self, completions: Sequence[str], ground_truths: Sequence[str]) -> RewardResult:
        """One reward per completion, in order; failures score 0 and are counted in the result."""
        if len(completions) != len(ground_truths):
            raise ValueError(f"got {len(completions)} completions but {len(ground_truths)} ground truths")
        if self._pool is not None:
            return self._pool.score(completions, ground_truths)
        result = RewardResult(rewards=[0.0] * len(completions))
        for i, (completion, truth) in enumerate(zip(completions, ground_truths)):
            try:
                with time_limit(self._timeout_s):
                    result.rewards[i] = call_reward(self._fn, completion, truth)
            except RewardTimeout:
                result.num_timeouts += 1
                result.errors.append(f"item {i}: timed out after {self._timeout_s} s")
            except Exception as e:
                result.num_errors += 1
                result.errors.append(f"item {i}: {type(e).__name__}: {e}")
        return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
