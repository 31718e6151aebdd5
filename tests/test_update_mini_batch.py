"""One optimizer step of the loop: without precomputed old log-probs (the first mini-batch of an RL
step) it takes ``lp_old`` from its own forward, and gives the step a separate no-grad pass gives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_diagnostics import TEMPERATURE, make_samples, tiny_model

from occ_fast.algorithm import LossConfig
from occ_fast.batching import make_micro_batches
from occ_fast.train import UpdateStats, old_main_logprobs, update_mini_batch


def one_step(precompute: bool, regime: str) -> tuple[dict[str, torch.Tensor], dict[str, float], list]:
    model = tiny_model(seed=3)
    samples = make_samples(seed=5)
    micros = [(m, True) for m in make_micro_batches(samples, token_budget=40)]
    run = SimpleNamespace(
        cfg=SimpleNamespace(
            rollout=SimpleNamespace(temperature=TEMPERATURE), optim=SimpleNamespace(grad_clip=1.0)
        ),
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        loss_cfg=LossConfig(mtp_regime=regime),
        autocast_dtype=None,
    )
    olds = [old_main_logprobs(run, micro) for micro, _ in micros] if precompute else None
    stats = UpdateStats()
    update_mini_batch(run, samples, micros, olds, stats)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats.summary(), stats.lams.first


@pytest.mark.parametrize("regime", ["occ", "ce"])
def test_first_mini_batch_old_logprobs_come_from_the_training_forward(regime):
    reused_weights, reused, lams = one_step(precompute=False, regime=regime)
    separate_weights, separate, _ = one_step(precompute=True, regime=regime)
    assert reused["loss"] == pytest.approx(separate["loss"], rel=1e-5)
    assert reused["policy/clip_low"] == reused["policy/clip_high"] == 0.0  # the ratio is exactly 1
    assert all(float(lam) == 0.0 for lam in lams)  # OCC's d_rl = lp - lp_old is exactly 0
    for key, value in separate_weights.items():
        torch.testing.assert_close(reused_weights[key], value, rtol=0, atol=1e-6, msg=key)
    changed = sum(not torch.equal(reused_weights[k], v) for k, v in tiny_model(seed=3).state_dict().items())
    assert changed > 0  # the step did train
