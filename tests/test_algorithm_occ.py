import math

import pytest
import torch

from occ_fast.algorithm import LossConfig, compute_loss, occ_coefficient

# Hand example, B=2, R=3, last token of row 1 is padding (with values that would change every result).
#   d_rl  = [[0.2, -0.1,  0.4], [0.1,  0.3, 9]]
#   d_mtp = [[1.0,  0.5, -2.0], [2.0, -1.0, 7]]
#   valid products d_rl*d_mtp: 0.2, -0.05, -0.8, 0.2, -0.3 -> sum -0.75;  d_mtp^2: 1, .25, 4, 4, 1 -> 10.25
#   valid ratios d_rl/d_mtp:    0.2, -0.2,  -0.2, 0.05, -0.3 -> sum -0.45
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
LP_OLD = torch.full((2, 3), -1.5, dtype=torch.float64)
D_RL = torch.tensor([[0.2, -0.1, 0.4], [0.1, 0.3, 9.0]], dtype=torch.float64)
D_MTP = torch.tensor([[1.0, 0.5, -2.0], [2.0, -1.0, 7.0]], dtype=torch.float64)


def _occ(aggregation, lam_plus=1.0, num_heads=1):
    lp_main = (LP_OLD + D_RL).requires_grad_()
    lp_mtp = (LP_OLD + D_MTP).requires_grad_()
    return occ_coefficient(
        LP_OLD, lp_main, lp_mtp, MASK, lam_plus=lam_plus, aggregation=aggregation, num_heads=num_heads
    )


def test_paper_aggregation_by_hand():
    s = _occ("paper", lam_plus=2.0)
    assert s.lam.item() == pytest.approx(2.0 * -0.75 / 10.25, rel=1e-6)
    assert s.c_hat.item() == pytest.approx(-0.15, rel=1e-6)  # -0.75 / 5
    assert s.v2_hat.item() == pytest.approx(2.05, rel=1e-6)  # 10.25 / 5
    assert not s.lam.requires_grad


def test_code_counts_padding_as_zero_code_masked_excludes_it():
    # code: -0.45 / 6 entries = -0.075; code_masked: -0.45 / 5 valid = -0.09; both times lam_plus / K
    assert _occ("code", lam_plus=0.5).lam.item() == pytest.approx(-0.0375, rel=1e-6)
    assert _occ("code", lam_plus=0.5, num_heads=2).lam.item() == pytest.approx(-0.01875, rel=1e-6)
    assert _occ("code_masked", lam_plus=0.5).lam.item() == pytest.approx(-0.045, rel=1e-6)
    # diagnostics do not depend on the aggregation
    assert _occ("code").c_hat.item() == pytest.approx(-0.15, rel=1e-6)


def test_lam_is_zero_on_first_mini_batch():
    s = occ_coefficient(LP_OLD, LP_OLD.clone(), LP_OLD + D_MTP, MASK)
    assert s.lam.item() == 0.0


def test_unknown_aggregation_is_named():
    with pytest.raises(ValueError, match="'mean'"):
        _occ("mean")


# One token, A = 1, lp_old = 0, d = ln 1.5: lp_mtp = d (r_mtp = 1.5), lp_main = -d/2 (r_main = 1/sqrt(1.5)).
# paper lam = (-d/2 * d) / (d^2 + 1e-8) = -0.5; main loss = -0.81649658 (no clip, A > 0).
# form loss:      lam * max(-1.5, -1.28) = -0.5 * -1.28 = 0.64; grad wrt lp_mtp 0 (clipped)
# form advantage: A' = -0.5: max(0.75, 0.64) = 0.75, dual bound 5 -> 0.75; grad wrt lp_mtp = -A' r = 0.75
D = math.log(1.5)


def _one_token(regime, form="advantage", lp_main_value=-D / 2, **kw):
    lp_main = torch.tensor([lp_main_value], dtype=torch.float64, requires_grad=True)
    lp_mtp = torch.tensor([D], dtype=torch.float64, requires_grad=True)
    cfg = LossConfig(mtp_regime=regime, occ_form=form, **kw)
    loss, metrics = compute_loss(
        cfg,
        torch.zeros(1, dtype=torch.float64),
        lp_main,
        torch.ones(1, dtype=torch.float64),
        torch.ones(1),
        lp_mtp=[lp_mtp],
        mtp_masks=[torch.ones(1)],
    )
    loss.backward()
    return loss.item(), metrics, lp_mtp.grad.item()


def test_occ_negative_lam_forms_differ():
    loss_form, metrics, grad_loss_form = _one_token("occ", "loss")
    adv_form, _, grad_adv_form = _one_token("occ", "advantage")
    assert metrics["mtp1/lam"].item() == pytest.approx(-0.5, rel=1e-6)
    assert loss_form == pytest.approx(-0.81649658 + 0.64, rel=1e-6)
    assert adv_form == pytest.approx(-0.81649658 + 0.75, rel=1e-6)
    assert grad_loss_form == 0.0
    assert grad_adv_form == pytest.approx(0.75, rel=1e-6)


def test_occ_positive_lam_forms_agree():
    # lp_main = +d/2: lam = +0.5, main loss -sqrt(1.5) = -1.22474487;
    # MTP term 0.5 * -1.28 = -0.64 in both forms
    loss_form, *_ = _one_token("occ", "loss", lp_main_value=D / 2)
    adv_form, metrics, _ = _one_token("occ", "advantage", lp_main_value=D / 2)
    assert loss_form == pytest.approx(-1.22474487 - 0.64, rel=1e-6)
    assert adv_form == pytest.approx(loss_form, rel=1e-9)
    assert metrics["mtp1/clip_high"].item() == 1.0


def test_policy_regime_fixed_lam():
    # main -0.81649658 + 0.5 * PolicyLoss(mtp) = 0.5 * -1.28
    loss, metrics, _ = _one_token("policy", mtp_coef=0.5)
    assert loss == pytest.approx(-0.81649658 - 0.64, rel=1e-6)
    assert metrics["mtp1/coef"].item() == 0.5
    assert metrics["mtp1/lam"].item() == pytest.approx(-0.5, rel=1e-6)  # proxy still logged


@pytest.mark.parametrize("regime", ["detach", "ce"])
def test_ce_regimes(regime):
    # A = 1, r_main = 1 -> main -1; CE over MTP-valid tokens = (2 + 3) / 2 = 2.5; c = 0.1 -> total -0.75
    lp_mtp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    loss, metrics = compute_loss(
        LossConfig(mtp_regime=regime, mtp_coef=0.1),
        torch.zeros(3),
        torch.zeros(3, requires_grad=True),
        torch.ones(3),
        torch.ones(3),
        lp_mtp=[lp_mtp],
        mtp_masks=[torch.tensor([0, 1, 1])],
    )
    loss.backward()
    assert loss.item() == pytest.approx(-0.75)
    assert metrics["mtp1/loss"].item() == pytest.approx(0.25)
    torch.testing.assert_close(lp_mtp.grad, torch.tensor([0.0, -0.05, -0.05]))


def test_two_heads_code_aggregation_and_explicit_counts():
    # head 1: d_mtp = 1, d_rl = 0.5 -> ratio 0.5; head 2: d_mtp = 2 -> ratio 0.25; code: lam_plus / K = 0.5
    lp_old = torch.zeros(2)
    lp_main = torch.full((2,), 0.5)
    heads = [torch.ones(2), torch.full((2,), 2.0)]
    cfg = LossConfig(mtp_regime="occ", occ_aggregation="code", occ_lam_plus=1.0)
    _, m = compute_loss(
        cfg,
        lp_old,
        lp_main,
        torch.ones(2),
        torch.ones(2),
        lp_mtp=heads,
        mtp_masks=[torch.ones(2), torch.ones(2)],
        num_tokens=4,
        mtp_num_tokens=[4, 4],
    )
    assert m["mtp1/lam"].item() == pytest.approx(0.25, rel=1e-6)
    assert m["mtp2/lam"].item() == pytest.approx(0.125, rel=1e-6)
    # main: 2 tokens of -max(e^0.5, ..) clipped at 1.28 -> -2.56 / 4
    assert m["policy/loss"].item() == pytest.approx(-0.64, rel=1e-6)


def test_tis_weights_scale_main_and_mtp_terms():
    # lp_old - lp_rollout = ln 0.5 -> weight 0.5 on both terms of the policy-regime example
    loss, metrics = compute_loss(
        LossConfig(mtp_regime="policy", mtp_coef=0.5, tis_cap=2.0),
        torch.zeros(1),
        torch.zeros(1),
        torch.ones(1),
        torch.ones(1),
        lp_mtp=[torch.tensor([D])],
        mtp_masks=[torch.ones(1)],
        lp_rollout=torch.tensor([math.log(2.0)]),
    )
    assert loss.item() == pytest.approx(0.5 * (-1.0 - 0.64), rel=1e-6)
    assert metrics["tis/weight"].item() == pytest.approx(0.5)


def test_input_errors_name_the_problem():
    one = torch.ones(1)
    with pytest.raises(ValueError, match="mtp_regime='none'"):
        compute_loss(LossConfig(), one, one, one, one, lp_mtp=[one], mtp_masks=[one])
    with pytest.raises(ValueError, match="at least one MTP head"):
        compute_loss(LossConfig(mtp_regime="occ"), one, one, one, one)
    with pytest.raises(ValueError, match="mtp_num_tokens"):
        compute_loss(
            LossConfig(mtp_regime="occ"), one, one, one, one, lp_mtp=[one], mtp_masks=[one], num_tokens=3
        )
    with pytest.raises(ValueError, match="lp_rollout"):
        compute_loss(LossConfig(tis_cap=2.0), one, one, one, one)


@pytest.mark.parametrize(
    "field,value",
    [
        ("mtp_regime", "joint"),
        ("occ_aggregation", "mean"),
        ("occ_form", "grad"),
        ("eps_low", 1.0),
        ("eps_high", -0.1),
        ("dual_clip_c", 1.0),
        ("tis_cap", 0.0),
        ("occ_lam_plus", float("nan")),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"LossConfig.{field}"):
        LossConfig(**{field: value})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loss_path_has_no_host_sync():
    dev = "cuda"
    lp_old, mask, adv = torch.zeros(64, device=dev), torch.ones(64, device=dev), torch.randn(64, device=dev)
    lp_main = torch.randn(64, device=dev, requires_grad=True)
    lp_mtp = torch.randn(64, device=dev, requires_grad=True)
    num = torch.tensor(64.0, device=dev)
    cfg = LossConfig(mtp_regime="occ", tis_cap=2.0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _ = compute_loss(
            cfg,
            lp_old,
            lp_main,
            adv,
            mask,
            lp_mtp=[lp_mtp],
            mtp_masks=[mask],
            num_tokens=num,
            mtp_num_tokens=[num],
            lp_rollout=lp_old,
        )
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
