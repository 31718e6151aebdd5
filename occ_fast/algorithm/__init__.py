"""RL algorithm pieces: GRPO advantages, the DAPO policy loss, OCC and the MTP regimes."""

from occ_fast.algorithm.advantages import (
    GRPOAdvantages,
    broadcast_to_tokens,
    grpo_advantages,
    zero_variance_groups,
)
from occ_fast.algorithm.config import LossConfig
from occ_fast.algorithm.dapo import overlong_penalty
from occ_fast.algorithm.loss import compute_loss
from occ_fast.algorithm.occ import CoefficientLog, OCCStats, occ_coefficient, padded_response_entries
from occ_fast.algorithm.policy_loss import clipped_surrogate, policy_loss, token_mean, truncated_is_weights

__all__ = [
    "CoefficientLog",
    "GRPOAdvantages",
    "LossConfig",
    "OCCStats",
    "broadcast_to_tokens",
    "clipped_surrogate",
    "compute_loss",
    "grpo_advantages",
    "occ_coefficient",
    "overlong_penalty",
    "padded_response_entries",
    "policy_loss",
    "token_mean",
    "truncated_is_weights",
    "zero_variance_groups",
]
