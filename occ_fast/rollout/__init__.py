"""Rollout engines: prompts in, completions with their sampling log-probs out."""

from occ_fast.rollout.base import FinishReason, ProgressCallback, RolloutEngine, RolloutResult, SamplingParams
from occ_fast.rollout.transformers_engine import TransformersEngine

__all__ = [
    "FinishReason",
    "ProgressCallback",
    "RolloutEngine",
    "RolloutResult",
    "SamplingParams",
    "TransformersEngine",
]
