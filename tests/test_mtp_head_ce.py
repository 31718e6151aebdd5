"""``mtp.head_ce_coef``: an MTP cross-entropy added to the policy/occ regimes (not part of the method),
checked against a hand computation, its gradient, and the configuration's refusals."""

from __future__ import annotations

import pytest
import torch

from occ_fast.algorithm import LossConfig, compute_loss
from occ_fast.config import ConfigError, parse_config

T = torch.float64
# Five response tokens, the last one padding; two MTP heads, the second without a row at token 4.
LP_OLD = torch.tensor([-1.0, -0.5, -2.0, -0.3, -0.7], dtype=T)
ADVANTAGES = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0], dtype=T)
MASK = torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)
LP_MTP = (
    torch.tensor([-1.5, -0.2, -3.0, -0.9, -4.0], dtype=T),
    torch.tensor([-2.0, -1.0, -0.1, -5.0, -4.0], dtype=T),
)
MTP_MASKS = (MASK, torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool))
# Hand computation of each head's cross-entropy, the mean of -lp over its valid tokens:
#   head 1: (1.5 + 0.2 + 3.0 + 0.9) / 4 = 1.4     head 2: (2.0 + 1.0 + 0.1) / 3 = 31/30
CE = (1.4, 31 / 30)


def loss_of(regime: str, head_ce_coef: float, lp_main: torch.Tensor, lp_mtp=LP_MTP):
    cfg = LossConfig(mtp_regime=regime, mtp_coef=0.5, mtp_head_ce_coef=head_ce_coef)
    return compute_loss(cfg, LP_OLD, lp_main, ADVANTAGES, MASK, lp_mtp=lp_mtp, mtp_masks=MTP_MASKS)


@pytest.mark.parametrize("regime", ["policy", "occ"])
@pytest.mark.parametrize("coef", [0.1, 0.8])
def test_adds_the_heads_cross_entropy_split_over_heads(regime, coef):
    lp_main = LP_OLD + torch.tensor([0.1, -0.2, 0.05, 0.3, 0.0], dtype=T)  # a later mini-batch: lam != 0
    base, base_metrics = loss_of(regime, 0.0, lp_main)
    with_ce, metrics = loss_of(regime, coef, lp_main)
    assert with_ce.item() == pytest.approx(base.item() + coef / 2 * (CE[0] + CE[1]), rel=1e-12)
    for k in (0, 1):
        assert metrics[f"mtp{k + 1}/ce"].item() == pytest.approx(CE[k], rel=1e-12)
        assert metrics[f"mtp{k + 1}/lam"] == base_metrics[f"mtp{k + 1}/lam"]  # the coefficient is untouched
    assert "mtp1/ce" not in base_metrics


def test_gradient_on_the_heads_is_the_cross_entropys():
    lp_main = LP_OLD.clone()  # first mini-batch: d_rl = 0, so OCC's lam is 0 and only the added term acts
    lp_mtp = tuple(t.clone().requires_grad_(True) for t in LP_MTP)
    loss, metrics = loss_of("occ", 0.4, lp_main, lp_mtp)
    assert metrics["mtp1/lam"].item() == 0.0
    loss.backward()
    for tensor, mask in zip(lp_mtp, MTP_MASKS):
        expected = torch.where(mask, -0.4 / 2 / mask.sum(), 0.0).to(T)
        torch.testing.assert_close(tensor.grad, expected, rtol=1e-6, atol=0)  # token counts are fp32
    without = tuple(t.clone().requires_grad_(True) for t in LP_MTP)
    loss_of("occ", 0.0, lp_main, without)[0].backward()
    assert all(t.grad is None or not t.grad.any() for t in without)  # what the method alone gives here


def test_refused_where_the_regime_has_its_own_cross_entropy():
    for regime in ("detach", "ce", "none"):
        with pytest.raises(ValueError, match=f"applies to the policy/occ regimes, not '{regime}'"):
            LossConfig(mtp_regime=regime, mtp_head_ce_coef=0.1)
    with pytest.raises(ConfigError, match=r"mtp.head_ce_coef > 0 .* mtp.regime='detach'"):
        parse_config(["--mtp.regime", "detach", "--mtp.head-ce-coef", "0.1"])
    with pytest.raises(ConfigError, match="mtp.head_ce_coef"):
        parse_config(["--mtp.head-ce-coef", "-1"])
    cfg = parse_config(["--mtp.regime", "occ", "--mtp.head-ce-coef", "0.1"])
    assert cfg.to_loss_config().mtp_head_ce_coef == 0.1
    assert parse_config([]).to_loss_config().mtp_head_ce_coef == 0.0  # the method as published by default
