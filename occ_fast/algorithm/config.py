"""Loss configuration: the policy-loss clips, the MTP regime and its coefficient."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from occ_fast.algorithm.occ import AGGREGATIONS, Aggregation
from occ_fast.algorithm.rollout_mismatch import IS_LEVELS, ISLevel

Regime = Literal["none", "detach", "ce", "policy", "occ", "oracle"]
REGIMES: tuple[str, ...] = ("none", "detach", "ce", "policy", "occ", "oracle")
Form = Literal["advantage", "loss"]
FORMS: tuple[str, ...] = ("advantage", "loss")


@dataclass(frozen=True)
class LossConfig:
    """How the total loss is built from per-token log-probs (method.md sections 4, 5, 7).

    Attributes:
        mtp_regime: ``none`` (no MTP term), ``detach``/``ce`` (``+ mtp_coef * CE_mtp``; the detach
            itself happens in the model), ``policy`` (``+ mtp_coef * PolicyLoss(mtp)``), ``occ``
            (MTP policy loss weighted by the calibrated ``lam_t``), ``oracle`` (a diagnostic, not the
            method: the MTP policy loss weighted by ``lam_plus * c_cross / v2`` from exact gradients
            each mini-batch, ``occ_fast.monitoring.cross_fit.oracle_coefficient``; slow).
        mtp_coef: fixed coefficient of the MTP term for ``detach``, ``ce`` (c, paper 0.1) and
            ``policy`` (lam, paper 0.1 .. 1.0). With K heads each head gets ``mtp_coef / K``.
        occ_lam_plus: global scale of the OCC (and oracle) coefficient (paper text 1.0, reference script 0.1).
        mtp_head_ce_coef: ``policy``/``occ`` only, not part of the method: also add
            ``mtp_head_ce_coef / K * CE_mtp`` per head (the ``ce`` term), so that the MTP heads keep
            learning to draft while the calibrated ``lam_t`` is near 0. 0 = as published.
        occ_aggregation: ``paper`` | ``code`` | ``code_masked`` (see ``occ_coefficient``).
        occ_form: ``advantage`` (reference code: MTP advantages times lam) or ``loss`` (paper
            formula: MTP loss times lam), for ``occ`` and ``oracle``. Equal for lam >= 0, differ for lam < 0.
        eps_low, eps_high: clip-higher bounds of the ratio, ``[1 - eps_low, 1 + eps_high]``.
        dual_clip_c: dual-clip bound for negative advantages (> 1).
        tis_cap: truncated importance-sampling cap on ``exp(lp_old - lp_rollout)``; None disables.
        tis_level: ``token`` (one ratio per token) or ``sequence`` (the product of a sequence's token
            ratios, one weight per sequence) for ``tis_cap``.
        is_mask_band: ``(low, high)``: sequences whose ratio ``exp(sum(lp_old - lp_rollout))`` leaves
            the band get weight 0; None disables. See ``rollout_is_weights``.
    """

    mtp_regime: Regime = "none"
    mtp_coef: float = 0.1
    occ_lam_plus: float = 1.0
    mtp_head_ce_coef: float = 0.0
    occ_aggregation: Aggregation = "paper"
    occ_form: Form = "advantage"
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip_c: float = 10.0
    tis_cap: float | None = None
    tis_level: ISLevel = "token"
    is_mask_band: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _choice("mtp_regime", self.mtp_regime, REGIMES)
        _choice("occ_aggregation", self.occ_aggregation, AGGREGATIONS)
        _choice("occ_form", self.occ_form, FORMS)
        _finite("mtp_coef", self.mtp_coef)
        _finite("occ_lam_plus", self.occ_lam_plus)
        _finite("mtp_head_ce_coef", self.mtp_head_ce_coef)
        if self.mtp_head_ce_coef < 0:
            raise ValueError(f"LossConfig.mtp_head_ce_coef must be >= 0, got {self.mtp_head_ce_coef}")
        if self.mtp_head_ce_coef and self.mtp_regime not in ("policy", "occ"):
            raise ValueError(
                f"LossConfig.mtp_head_ce_coef applies to the policy/occ regimes, not {self.mtp_regime!r}"
            )
        if not 0.0 <= self.eps_low < 1.0:
            raise ValueError(f"LossConfig.eps_low must be in [0, 1), got {self.eps_low}")
        if not 0.0 <= self.eps_high < math.inf:
            raise ValueError(f"LossConfig.eps_high must be finite and >= 0, got {self.eps_high}")
        if not 1.0 < self.dual_clip_c < math.inf:
            raise ValueError(f"LossConfig.dual_clip_c must be finite and > 1, got {self.dual_clip_c}")
        if self.tis_cap is not None and not 0.0 < self.tis_cap < math.inf:
            raise ValueError(f"LossConfig.tis_cap must be None or finite and > 0, got {self.tis_cap}")
        _choice("tis_level", self.tis_level, IS_LEVELS)
        if self.tis_level == "sequence" and self.tis_cap is None:
            raise ValueError("LossConfig.tis_level='sequence' needs tis_cap (the cap it truncates at)")
        band = self.is_mask_band
        if band is not None and not (len(band) == 2 and 0.0 < band[0] <= 1.0 <= band[1] < math.inf):
            raise ValueError(
                f"LossConfig.is_mask_band must be (low, high) with 0 < low <= 1 <= high, got {band}"
            )


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"LossConfig.{field} must be one of {allowed}, got {value!r}")


def _finite(field: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"LossConfig.{field} must be a finite number, got {value}")
