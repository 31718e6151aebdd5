"""Which sequence each token of a micro-batch belongs to, for per-sequence reductions on the device."""

from __future__ import annotations

import torch
from torch import Tensor


def sequence_index(position_ids: Tensor) -> Tensor:
    """``[rows * T]`` index of the sequence each position belongs to, numbered from 0 in order.

    Every sequence starts at position 0, in a packed row (``occ_fast.policy.batching``) as in a padded one,
    so the running count of zeros numbers them. No host sync.
    """
    return torch.cumsum((position_ids.reshape(-1) == 0).long(), 0) - 1


def per_sequence_sum(values: Tensor, sequence_ids: Tensor, num_sequences: int) -> Tensor:
    """``[num_sequences]`` sums of per-token ``values`` by ``sequence_ids``."""
    out = torch.zeros(num_sequences, dtype=values.dtype, device=values.device)
    return out.index_add(0, sequence_ids, values)
