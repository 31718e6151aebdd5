"""OCC coefficient (method.md section 7): the calibrated MTP weight from per-token log-prob displacements.

It replaces the gradient inner products of ``lam* = lam_plus * <g_RL, g_MTP> / ||g_MTP||^2`` with
``d_rl = lp_main - lp_old`` and ``d_mtp = lp_mtp - lp_old``, which the forward pass already has,
so it costs a few element-wise ops and no host sync.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

Aggregation = Literal["paper", "code", "code_masked"]
AGGREGATIONS: tuple[str, ...] = ("paper", "code", "code_masked")
OCC_EPS = 1e-8


class OCCStats(NamedTuple):
    lam: Tensor  # 0-dim, detached: the coefficient applied to this head's MTP term
    c_hat: Tensor  # sum(d_rl * d_mtp * mask) / n  (n = valid tokens of this head)
    v2_hat: Tensor  # sum(d_mtp^2 * mask) / n


def occ_coefficient(
    lp_old: Tensor,
    lp_main: Tensor,
    lp_mtp: Tensor,
    mtp_mask: Tensor,
    *,
    lam_plus: float = 1.0,
    aggregation: Aggregation = "paper",
    num_heads: int = 1,
) -> OCCStats:
    """Coefficient for one MTP head, computed without gradient.

    Aggregations:
      - ``paper``: ``lam_plus * sum(d_rl d_mtp m) / (sum(d_mtp^2 m) + 1e-8)``.
      - ``code`` (reference implementation): ``(lam_plus / K) * mean over all entries of
        m * d_rl d_mtp / (d_mtp^2 + 1e-8)``; padding counts as zeros in the mean, so the value
        depends on how the batch is padded.
      - ``code_masked``: as ``code``, averaged over valid tokens only.

    ``c_hat`` and ``v2_hat`` are the masked token means of ``d_rl * d_mtp`` and ``d_mtp^2`` for every
    aggregation (diagnostics of how the proxy's numerator and denominator evolve); only ``paper``
    has ``lam = lam_plus * c_hat / v2_hat`` (up to the 1e-8).

    With K > 1 heads each head gets its own coefficient: ``paper`` calibrates each as if it were
    alone, ``code`` divides by K as the reference does.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    with torch.no_grad():
        valid = mtp_mask.bool()
        dtype = torch.promote_types(lp_main.dtype, torch.float32)  # bf16 log-probs: compute in fp32
        zero = torch.zeros((), dtype=dtype, device=lp_old.device)
        d_rl = (lp_main - lp_old).to(dtype)
        d_mtp = (lp_mtp - lp_old).to(dtype)
        cross = torch.where(valid, d_rl * d_mtp, zero)
        sq = torch.where(valid, d_mtp * d_mtp, zero)
        n = valid.sum().clamp(min=1)
        c_hat = cross.sum() / n
        v2_hat = sq.sum() / n
        if aggregation == "paper":
            lam = lam_plus * cross.sum() / (sq.sum() + OCC_EPS)
        else:
            ratio = torch.where(valid, d_rl * d_mtp / (d_mtp * d_mtp + OCC_EPS), zero)
            denom = ratio.numel() if aggregation == "code" else n
            lam = (lam_plus / num_heads) * ratio.sum() / denom
    return OCCStats(lam, c_hat, v2_hat)
