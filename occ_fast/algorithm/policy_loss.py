"""DAPO clipped policy surrogate (method.md section 4), per token, with an explicit token-mean normaliser.

Everything here stays on the device: no ``.item()`` and no data-dependent Python branches, so the
loss path never waits for the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_RATIO_CLAMP = 20.0


def token_mean(values: Tensor, mask: Tensor, num_tokens: Tensor | float | None = None) -> Tensor:
    """``sum(values over valid tokens) / num_tokens``.

    Pass ``num_tokens`` = valid tokens of the whole mini-batch (summed over micro-batches, and over
    ranks when gradients are all-reduced as a sum) so that accumulated micro-batch losses equal
    the mini-batch token mean. Without it the local ``mask.sum()`` is used (clamped to >= 1).
    Padding is excluded with ``where`` so NaN/inf in padded positions cannot leak in.
    """
    total = torch.where(mask.bool(), values, torch.zeros_like(values)).sum()
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1)
    return total / num_tokens


def clipped_surrogate(
    lp_old: Tensor,
    lp: Tensor,
    advantages: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip_c: float = 10.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-token DAPO loss and where each clip is active.

    Returns ``(loss, clipped_low, clipped_high, clipped_dual)``; the three are bool masks of the
    tokens whose gradient a clip removed: the low side (A < 0, r < 1 - eps_low), the high side
    (A > 0, r > 1 + eps_high) and the dual clip (A < 0, -A * c below the clipped loss).
    """
    ratio = torch.exp(torch.clamp(lp - lp_old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss_max = torch.maximum(loss_unclipped, loss_clipped)
    dual_bound = -advantages * dual_clip_c
    negative = advantages < 0
    loss = torch.where(negative, torch.minimum(loss_max, dual_bound), loss_max)
    clip_active = loss_clipped > loss_unclipped
    clipped_low = clip_active & negative
    clipped_high = clip_active & (advantages > 0)
    clipped_dual = negative & (loss_max > dual_bound)
    return loss, clipped_low, clipped_high, clipped_dual


def truncated_is_weights(lp_old: Tensor, lp_rollout: Tensor, cap: float) -> Tensor:
    """Token-level TIS weight ``min(exp(lp_old - lp_rollout), cap)``, detached.

    Corrects for the rollout engine sampling from a slightly different distribution than the
    trainer's old policy (kernels, precision). Computed as ``exp(min(d, log cap))`` so it never
    overflows.
    """
    if not cap > 0:
        raise ValueError(f"TIS cap must be > 0, got {cap}")
    log_ratio = (lp_old - lp_rollout).detach()
    return torch.exp(torch.clamp(log_ratio, max=math.log(cap)))


def policy_loss(
    lp_old: Tensor,
    lp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip_c: float = 10.0,
    num_tokens: Tensor | float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PolicyLoss(lp_old, lp, A, mask): token-mean DAPO surrogate, optionally TIS-weighted.

    Metrics (detached 0-dim tensors): ``loss`` and the clip fractions ``clip_low``,
    ``clip_high``, ``clip_dual``, all divided by the same ``num_tokens`` as the loss, so summing
    them over the micro-batches of a mini-batch gives the mini-batch values.
    """
    per_token, low, high, dual = clipped_surrogate(lp_old, lp, advantages, eps_low, eps_high, dual_clip_c)
    if is_weights is not None:
        per_token = per_token * is_weights
    loss = token_mean(per_token, mask, num_tokens)
    metrics = {
        "loss": loss.detach(),
        "clip_low": token_mean(low.float(), mask, num_tokens).detach(),
        "clip_high": token_mean(high.float(), mask, num_tokens).detach(),
        "clip_dual": token_mean(dual.float(), mask, num_tokens).detach(),
    }
    return loss, metrics
