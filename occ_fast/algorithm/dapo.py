"""DAPO reward shaping: the soft overlong penalty."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def overlong_penalty(lengths: Tensor | Sequence[int], max_length: int, cache_length: int) -> Tensor:
    """DAPO soft overlong punishment, added to the correctness reward.

    ``0`` for ``len <= L_max - L_cache``, ``(L_max - L_cache - len) / L_cache`` inside the buffer
    (falling linearly from 0 to -1), ``-1`` beyond ``L_max``.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(f"overlong cache_length must be in [1, max_length={max_length}], got {cache_length}")
    lengths = torch.as_tensor(lengths, dtype=torch.float32)
    threshold = max_length - cache_length
    penalty = (threshold - lengths) / cache_length
    return torch.clamp(penalty, min=-1.0, max=0.0)
