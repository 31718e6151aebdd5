"""The statistics of an RL step's updates: per-micro-batch loss metrics summed on the device and
turned into numbers once, at the end of the step."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from occ_fast.algorithm import CoefficientLog
from occ_fast.algorithm.rollout_mismatch import DEFAULT_MISMATCH_THRESHOLD, MismatchLog
from occ_fast.monitoring.spec_forecast import forecast, forecast_weights


class UpdateStats:
    """Accumulates per-micro-batch loss metrics (device tensors) and turns them into numbers once."""

    def __init__(self, mismatch_threshold: float = DEFAULT_MISMATCH_THRESHOLD) -> None:
        self.sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        self.lams = CoefficientLog()
        self.mismatch = MismatchLog(mismatch_threshold)  # rollout engine vs trainer log-probs
        self.grad_norms: list[torch.Tensor] = []
        self.loss_keys: set[str] = set()  # token means over the global count: summed over ranks
        self.optimizer_steps = 0
        self.nan_skipped = 0
        self.bad_grad_norm = math.nan
        self.finite: list[bool] = []  # per optimizer update, in order: applied (True) or skipped
        self.padding_micro_batches = 0  # data parallel: forwards run only to keep ranks in step

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums[key].to(value.device) + value.detach().float()

    def summary(self) -> dict[str, float]:
        steps = max(self.optimizer_steps + self.nan_skipped, 1)
        tokens = float(self.sums.get("count/tokens", torch.ones(())))
        mtp_rows = float(self.sums.get("count/mtp_rows", torch.ones(())))
        out = {}
        for key, value in self.sums.items():
            if key.startswith("count/"):
                continue
            if key == "policy/entropy_sum":
                out["policy/entropy"] = float(value) / max(tokens, 1.0)
            elif key == "mtp/hits":
                out["mtp/accuracy"] = float(value) / max(mtp_rows, 1.0)
            else:
                out[key] = float(value) / steps  # token-normalised per mini-batch: average over them
        out |= self.lams.summary() | self.mismatch.summary()
        if self.grad_norms:
            out["optim/grad_norm"] = float(torch.stack([g.cpu() for g in self.grad_norms]).mean())
        elif self.nan_skipped:  # every update skipped: the norm that stopped them (metrics.jsonl: null)
            out["optim/grad_norm"] = self.bad_grad_norm
        out |= forecast(self.sums)
        out["optim/nan_skipped"] = self.nan_skipped
        out["optim/padding_micro_batches"] = self.padding_micro_batches
        return out

    def token_weights(self) -> dict[str, float]:
        """The count each token mean of :meth:`summary` is over (tokens, MTP rows, draft positions):
        ranks combine those means weighted by it, so that 2 ranks log what one process would."""
        counts = {key: float(value) for key, value in self.sums.items() if key.startswith("count/")}
        return {
            "policy/entropy": counts.get("count/tokens", 0.0),
            "mtp/accuracy": counts.get("count/mtp_rows", 0.0),
            **self.mismatch.weights(),
            **forecast_weights(counts),
        }
