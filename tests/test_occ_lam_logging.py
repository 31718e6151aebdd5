"""The logged OCC coefficient covers the micro-batches where it is applied (from the second mini-batch
of a step on); the first mini-batch's exact zeros are logged on their own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_diagnostics import TEMPERATURE, make_samples, mini_batch, tiny_model

from occ_fast.algorithm import CoefficientLog, LossConfig
from occ_fast.policy.batching import make_micro_batches
from occ_fast.training.update import update_mini_batch
from occ_fast.training.update_stats import UpdateStats


def test_coefficient_log_by_hand():
    log = CoefficientLog()
    for lam, first in [(0.0, True), (0.0, True), (0.3, False), (-0.1, False), (0.4, False)]:
        log.add(torch.tensor(lam), first_mini_batch=first)
    summary = log.summary()
    assert summary["mtp/lam"] == pytest.approx(0.2)
    assert (summary["mtp/lam_min"], summary["mtp/lam_max"]) == pytest.approx((-0.1, 0.4))
    assert summary["mtp/lam_first_minibatch"] == 0.0
    assert CoefficientLog().summary() == {}
    only_first = CoefficientLog()
    only_first.add(torch.tensor(0.0), first_mini_batch=True)
    assert only_first.summary() == {"mtp/lam_first_minibatch": 0.0}  # one mini-batch: nothing applied


def test_two_mini_batches_log_the_applied_coefficient_undiluted():
    model = tiny_model(num_mtp=1, seed=3)
    samples = make_samples(n=12, seed=5)
    first, second = samples[:4], samples[4:]
    run = SimpleNamespace(
        cfg=SimpleNamespace(
            rollout=SimpleNamespace(temperature=TEMPERATURE, max_new_tokens=16),
            optim=SimpleNamespace(grad_clip=1.0),
        ),
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        loss_cfg=LossConfig(mtp_regime="occ"),
        autocast_dtype=None,
    )
    micros_first = [(m, True) for m in make_micro_batches(first, token_budget=20)]
    micros_second, olds_second, _, _ = mini_batch(model, second)  # lp_old displaced: lam != 0
    stats = UpdateStats()
    update_mini_batch(run, first, micros_first, None, stats)
    update_mini_batch(run, second, [(m, True) for m in micros_second], olds_second, stats)
    first_lams = [float(lam) for lam in stats.lams.first]
    applied = [float(lam) for lam in stats.lams.applied]
    assert len(first_lams) == len(micros_first) and len(applied) == len(micros_second) > 1
    assert first_lams == [0.0] * len(first_lams)
    summary = stats.summary()
    assert abs(summary["mtp/lam"]) > 1e-4
    assert summary["mtp/lam"] == pytest.approx(sum(applied) / len(applied), rel=1e-6)
    assert (summary["mtp/lam_min"], summary["mtp/lam_max"]) == pytest.approx((min(applied), max(applied)))
    assert summary["mtp/lam_first_minibatch"] == 0.0
