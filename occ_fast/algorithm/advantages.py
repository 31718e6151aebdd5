"""GRPO group-normalised advantages and the zero-variance group test that DAPO's dynamic sampling uses."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

GRPO_EPS = 1e-6


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [num_samples], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_size={group_size} must be >= 1 and divide the number of rewards ({rewards.numel()})"
        )
    return rewards.reshape(-1, group_size)


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Bool [num_groups]: groups whose rewards are all equal (they carry no GRPO signal).

    Samples of one prompt must be contiguous. Equality is exact (max == min), so a group of rewards
    that differ only by rounding noise is *not* reported; DAPO's dynamic sampling drops these groups
    and draws new prompts in their place.
    """
    groups = _grouped(rewards, group_size)
    return groups.amax(dim=1) == groups.amin(dim=1)


class GRPOAdvantages(NamedTuple):
    advantages: Tensor  # [num_samples], one value per completion
    zero_std: Tensor  # bool [num_groups]
    num_zero_std: int  # count of zero-variance groups, for the log


def grpo_advantages(rewards: Tensor, group_size: int) -> GRPOAdvantages:
    """Per group ``(R - mean) / (std + 1e-6)`` with the *unbiased* std (``torch.std``, as verl and TRL).

    Zero-variance groups (including group_size 1, where the unbiased std is undefined) get advantage
    exactly 0 rather than NaN. Samples of one prompt must be contiguous in ``rewards``.
    """
    groups = _grouped(rewards.to(torch.float32), group_size)
    zero_std = zero_variance_groups(rewards, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    adv = (groups - mean) / (std + GRPO_EPS)
    adv = torch.where(zero_std[:, None], torch.zeros_like(adv), adv)
    return GRPOAdvantages(adv.reshape(-1), zero_std, int(zero_std.sum()))


def broadcast_to_tokens(advantages: Tensor, response_mask: Tensor) -> Tensor:
    """[B] sequence advantages -> [B, T] token advantages, zero on padding."""
    if advantages.dim() != 1 or response_mask.dim() != 2 or response_mask.shape[0] != advantages.shape[0]:
        raise ValueError(
            f"expected advantages [B] and response_mask [B, T], got {tuple(advantages.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    return advantages[:, None] * response_mask.to(advantages.dtype)
