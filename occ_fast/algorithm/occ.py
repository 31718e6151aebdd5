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
    padded_entries: Tensor | float | None = None,
) -> OCCStats:
    """Coefficient for one MTP head, computed without gradient.

    Aggregations:
      - ``paper``: ``lam_plus * sum(d_rl d_mtp m) / (sum(d_mtp^2 m) + 1e-8)``.
      - ``code`` (reference implementation): ``(lam_plus / K) * sum(m * d_rl d_mtp / (d_mtp^2 + 1e-8))
        / (B * R)``: the mean over the micro-batch's padded ``[B, R]`` response tensor (B sequences,
        R the configured maximum response length: verl pads every response to it), padding entries
        counting as zeros. Pass the tensors either as that ``[B, R]`` tensor (the mean is then over
        its entries), or as the ``[N]`` scored tokens with ``padded_entries = B * R``
        (:func:`padded_response_entries`), which gives the same value whether the micro-batch is
        packed or padded.
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
            if aggregation == "code_masked":
                denom = n
            else:
                denom = ratio.numel() if padded_entries is None else padded_entries
            lam = (lam_plus / num_heads) * ratio.sum() / denom
    return OCCStats(lam, c_hat, v2_hat)


def padded_response_entries(num_samples: int, max_response_length: int) -> float:
    """``B * R`` of a micro-batch for the ``code`` aggregation: its sequence count times the configured
    maximum response length (``rollout.max_new_tokens``). The reference's ``loss_func`` divides by
    ``responses.size(1)``, and verl pads every response to ``rollout.response_length``, so its mean
    runs over that length, not over the micro-batch's longest response."""
    return float(num_samples * max_response_length)


class CoefficientLog:
    """A step's per-micro-batch OCC coefficients, kept apart by whether they can act.

    On the first mini-batch of an RL step the weights are the rollout weights, so ``d_rl = 0`` and
    the coefficient is exactly 0 (method.md section 7): averaging those zeros in would dilute the
    logged coefficient (by half with two mini-batches). ``mtp/lam``, ``mtp/lam_min`` and
    ``mtp/lam_max`` cover the later mini-batches, where the coefficient is applied;
    ``mtp/lam_first_minibatch`` is the first mini-batch's mean on its own.
    """

    def __init__(self) -> None:
        self.first: list[Tensor] = []
        self.applied: list[Tensor] = []

    def add(self, lam: Tensor, *, first_mini_batch: bool) -> None:
        (self.first if first_mini_batch else self.applied).append(lam.detach())

    def summary(self) -> dict[str, float]:
        out = {}
        if self.applied:
            lams = torch.stack([lam.float().cpu() for lam in self.applied])
            out |= {
                "mtp/lam": float(lams.mean()),
                "mtp/lam_min": float(lams.min()),
                "mtp/lam_max": float(lams.max()),
            }
        if self.first:
            out["mtp/lam_first_minibatch"] = float(
                torch.stack([lam.float().cpu() for lam in self.first]).mean()
            )
        return out


def gap_form(d_rl: Tensor, gap: Tensor) -> dict[str, Tensor]:
    """What the ``paper`` proxy reduces to when the head gap dominates (method.md section 7).

    With ``gap = lp_mtp - lp_main``, ``d_mtp = gap + d_rl``; one optimizer step moves ``lp_main`` by
    far less than the gap between the heads, so ``sum(d_rl d_mtp) / sum(d_mtp^2)`` is close to
    ``corr(d_rl, gap) * rms(d_rl) / rms(gap)``: it grows with the step size (``rms(d_rl)``) and carries
    no advantage weighting. Returns ``corr`` (Pearson), ``rms_d_rl``, ``rms_gap`` and their product
    ``gap_form`` over the given tokens (``[N]`` each, valid tokens only); 0-dim fp64 tensors.
    """
    x, y = d_rl.detach().double(), gap.detach().double()
    xc, yc = x - x.mean(), y - y.mean()
    denom = torch.sqrt((xc * xc).sum() * (yc * yc).sum())
    corr = torch.where(denom > 0, (xc * yc).sum() / denom, torch.zeros_like(denom))
    rms_d_rl, rms_gap = torch.sqrt((x * x).mean()), torch.sqrt((y * y).mean())
    form = torch.where(rms_gap > 0, corr * rms_d_rl / rms_gap, torch.zeros_like(rms_gap))
    return {"corr": corr, "rms_d_rl": rms_d_rl, "rms_gap": rms_gap, "gap_form": form}
