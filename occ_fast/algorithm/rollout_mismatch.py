"""Rollout-engine vs trainer log-probs: the mismatch metrics and the importance weights that correct for it.

The rollout engine samples from its own kernels and precision; the trainer's ``lp_old`` is the same
policy evaluated by the trainer. A gap between the two (temperature applied on one side only, top-p
renormalisation, bf16 kernels, a stale weight sync) silently biases the policy gradient, so the
trainer measures it every step and can reweight or drop what it cannot trust. With samples drawn
from the rollout policy, ``log r = lp_old - lp_rollout`` per token and, for ``KL(rollout || old)``,
``k1 = -log r`` and ``k3 = r - 1 - log r`` (unbiased; k3 is never negative).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from occ_fast.algorithm.policy_loss import truncated_is_weights
from occ_fast.algorithm.sequences import per_sequence_sum

ISLevel = Literal["token", "sequence"]
IS_LEVELS: tuple[str, ...] = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0
DEFAULT_MISMATCH_THRESHOLD = 0.1  # nats: a token whose log-probs differ by more is counted as mismatched
# Metric keys whose combination over data-parallel ranks is a max or a min (the rest: means).
MISMATCH_MAXIMA = frozenset(
    {"mismatch/abs_diff_max", "mismatch/seq_log_ratio_max", "mismatch/seq_abs_diff_max"}
)
MISMATCH_MINIMA = frozenset({"mismatch/seq_log_ratio_min"})
MISMATCH_TOKEN_MEANS = (
    "mismatch/abs_diff_mean", "mismatch/kl_k1", "mismatch/kl_k3", "mismatch/frac_above_threshold"
)  # fmt: skip


def rollout_is_weights(
    lp_old: Tensor,
    lp_rollout: Tensor,
    mask: Tensor,
    *,
    cap: float | None,
    level: ISLevel = "token",
    mask_band: tuple[float, float] | None = None,
    sequence_ids: Tensor | None = None,
    num_sequences: int | None = None,
) -> Tensor | None:
    """Per-token importance weights against rollout/trainer mismatch (detached); None when all are off.

    - ``cap`` with ``level="token"``: ``min(exp(lp_old - lp_rollout), cap)`` per token (truncated IS).
    - ``cap`` with ``level="sequence"``: ``min(exp(sum over the sequence of (lp_old - lp_rollout)), cap)``,
      one weight for every token of a sequence.
    - ``mask_band = (low, high)``: a sequence whose ratio ``exp(sum of log ratios)`` lies outside
      ``[low, high]`` gets weight 0 on all its tokens (dropped from the loss, still counted in the
      token normaliser); combined with ``cap`` by multiplication.

    ``sequence_ids`` (``[N]``, in ``0 .. num_sequences - 1``) are needed at sequence level and for
    the band; ``mask`` marks the tokens whose log ratios count.
    """
    if cap is None and mask_band is None:
        return None
    if level not in IS_LEVELS:
        raise ValueError(f"importance-sampling level must be one of {IS_LEVELS}, got {level!r}")
    needs_sequences = level == "sequence" or mask_band is not None
    if needs_sequences and (sequence_ids is None or num_sequences is None):
        raise ValueError(
            "sequence-level importance weights and the mask band need sequence_ids and num_sequences"
        )
    log_ratio = torch.where(mask.bool(), (lp_old - lp_rollout).detach().float(), 0.0)
    seq_log = (
        per_sequence_sum(log_ratio, sequence_ids, num_sequences)[sequence_ids] if needs_sequences else None
    )
    if cap is None:
        weights = torch.ones_like(log_ratio)
    elif level == "token":
        weights = truncated_is_weights(lp_old.float(), lp_rollout.float(), cap)
    else:
        weights = torch.exp(torch.clamp(seq_log, max=math.log(cap)))
    if mask_band is not None:
        low, high = mask_band
        inside = (seq_log >= math.log(low)) & (seq_log <= math.log(high))
        weights = weights * inside
    return weights


def kl_k3(lp_old: Tensor, lp_rollout: Tensor) -> Tensor:
    """Per-token ``k3 = r - 1 - log r`` with ``log r = lp_old - lp_rollout``, in fp64 (clamped like the
    other metrics): it is about ``d^2 / 2`` for a difference ``d``, which fp32's ``exp(-d) - 1 + d``
    loses to rounding below ``|d| ~ 1e-3`` (even negative), and ``expm1`` in fp32 below ``1e-4``."""
    d = (lp_rollout.double() - lp_old.double()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.expm1(-d) + d


class MismatchLog:
    """A step's rollout-vs-trainer mismatch, accumulated over micro-batches on the device.

    ``summary()`` gives, over the step's response tokens: ``mismatch/abs_diff_mean`` and
    ``mismatch/abs_diff_max`` of ``|lp_rollout - lp_old|``, ``mismatch/kl_k1`` and ``mismatch/kl_k3``
    (token means of the two estimators of ``KL(rollout || old)``), ``mismatch/frac_above_threshold``
    (share of tokens with ``|lp_rollout - lp_old| > threshold``); over its sequences:
    ``mismatch/seq_log_ratio_min`` / ``_max`` (the sequence log importance ratio
    ``sum(lp_old - lp_rollout)``) and ``mismatch/seq_abs_diff_max`` (the largest per-sequence mean
    ``|lp_rollout - lp_old|``).
    """

    def __init__(self, threshold: float = DEFAULT_MISMATCH_THRESHOLD) -> None:
        if not threshold > 0:
            raise ValueError(f"mismatch threshold must be > 0, got {threshold}")
        self.threshold = threshold
        self.sums: dict[str, Tensor] = {}
        self.maxima: dict[str, Tensor] = {}
        self.minima: dict[str, Tensor] = {}

    def add(self, lp_old: Tensor, lp_rollout: Tensor, sequence_ids: Tensor, num_sequences: int) -> None:
        """One micro-batch's scored tokens (``[N]`` each) and the sequence each belongs to."""
        with torch.no_grad():
            diff = (lp_rollout.float() - lp_old.float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            abs_diff = diff.abs()
            lengths = per_sequence_sum(torch.ones_like(diff), sequence_ids, num_sequences)
            present = lengths > 0
            seq_log_ratio = per_sequence_sum(-diff, sequence_ids, num_sequences)[present]
            seq_abs_mean = per_sequence_sum(abs_diff, sequence_ids, num_sequences)[present] / lengths[present]
            self._add("tokens", torch.tensor(float(diff.numel()), device=diff.device))
            self._add("abs_diff", abs_diff.sum())
            self._add("k1", diff.sum())
            self._add("k3", kl_k3(lp_old, lp_rollout).sum())
            self._add("above", (abs_diff > self.threshold).sum().float())
            if diff.numel():
                self._extreme(self.maxima, "abs_diff_max", abs_diff.max(), torch.maximum)
                self._extreme(self.maxima, "seq_log_ratio_max", seq_log_ratio.max(), torch.maximum)
                self._extreme(self.minima, "seq_log_ratio_min", seq_log_ratio.min(), torch.minimum)
                self._extreme(self.maxima, "seq_abs_diff_max", seq_abs_mean.max(), torch.maximum)

    def summary(self) -> dict[str, float]:
        tokens = float(self.sums["tokens"]) if "tokens" in self.sums else 0.0
        if tokens == 0:
            return {}
        sums = (self.sums[key] for key in ("abs_diff", "k1", "k3", "above"))
        out = {name: float(total) / tokens for name, total in zip(MISMATCH_TOKEN_MEANS, sums)}
        out |= {f"mismatch/{k}": float(v) for k, v in (self.maxima | self.minima).items()}
        return out

    def weights(self) -> dict[str, float]:
        """The token count behind every token mean of :meth:`summary`, to combine ranks by."""
        tokens = float(self.sums["tokens"]) if "tokens" in self.sums else 0.0
        return {key: tokens for key in MISMATCH_TOKEN_MEANS}

    def _add(self, key: str, value: Tensor) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    @staticmethod
    def _extreme(store: dict[str, Tensor], key: str, value: Tensor, pick) -> None:
        store[key] = pick(store[key], value) if key in store else value
