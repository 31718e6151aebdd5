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
from occ_fast.algorithm.occ import OCCStats, occ_coefficient
from occ_fast.algorithm.policy_loss import clipped_surrogate, policy_loss, token_mean, truncated_is_weights

__all__ = [
    "GRPOAdvantages",
    "LossConfig",
    "OCCStats",
    "broadcast_to_tokens",
    "clipped_surrogate",
    "compute_loss",
    "grpo_advantages",
    "occ_coefficient",
    "overlong_penalty",
    "policy_loss",
    "token_mean",
    "truncated_is_weights",
    "zero_variance_groups",
]
