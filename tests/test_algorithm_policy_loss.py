import math

import pytest
import torch

from occ_fast.algorithm import clipped_surrogate, policy_loss, token_mean, truncated_is_weights

# eps_low 0.2, eps_high 0.28, dual clip 10; lp_old = 0 so the ratio is exp(lp).
# token  A    r     L1=-A r  L2=-A clip(r)  max    dual bound -A*10  loss   active clip
#   0   +1   1.1    -1.1     -1.1          -1.1        -          -1.1     none
#   1   +1   1.5    -1.5     -1.28         -1.28       -          -1.28    high
#   2   +1   0.5    -0.5     -0.8          -0.5        -          -0.5     none
#   3   -1   0.5     0.5      0.8           0.8        10          0.8     low
#   4   -1   1.5     1.5      1.28          1.5        10          1.5     none
#   5   -2   20     40        2.56         40          20         20       dual
#   6    0   1.3     0        0             0           0          0       none
#   7   padding (NaN log-prob, must be ignored)
ADV = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -2.0, 0.0, 5.0])
RATIO = [1.1, 1.5, 0.5, 0.5, 1.5, 20.0, 1.3]
LOSS = [-1.1, -1.28, -0.5, 0.8, 1.5, 20.0, 0.0]
MASK = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0])


def _lp(requires_grad=False):
    lp = torch.tensor([math.log(r) for r in RATIO] + [float("nan")], dtype=torch.float64)
    return lp.requires_grad_(requires_grad)


def test_per_token_loss_and_clip_flags_by_hand():
    lp_old = torch.zeros(8, dtype=torch.float64)
    loss, low, high, dual = clipped_surrogate(lp_old, _lp(), ADV.double())
    torch.testing.assert_close(loss[:7], torch.tensor(LOSS, dtype=torch.float64))
    assert low[:7].tolist() == [False, False, False, True, False, False, False]
    assert high[:7].tolist() == [False, True, False, False, False, False, False]
    assert dual[:7].tolist() == [False, False, False, False, False, True, False]


def test_token_mean_loss_metrics_and_gradient():
    lp = _lp(requires_grad=True)
    loss, metrics = policy_loss(torch.zeros(8, dtype=torch.float64), lp, ADV.double(), MASK)
    assert loss.item() == pytest.approx(19.42 / 7)
    assert metrics["clip_low"].item() == pytest.approx(1 / 7)
    assert metrics["clip_high"].item() == pytest.approx(1 / 7)
    assert metrics["clip_dual"].item() == pytest.approx(1 / 7)
    loss.backward()
    # unclipped tokens: d(-A r)/d lp = -A r; clipped (1, 3), dual-clipped (5), A=0 (6), padding: 0
    expected = torch.tensor([-1.1, 0.0, -0.5, 0.0, 1.5, 0.0, 0.0, 0.0], dtype=torch.float64) / 7
    torch.testing.assert_close(lp.grad, expected)


def test_explicit_normaliser_for_grad_accumulation():
    lp_old = torch.zeros(8, dtype=torch.float64)
    loss, metrics = policy_loss(lp_old, _lp(), ADV.double(), MASK, num_tokens=10)
    assert loss.item() == pytest.approx(1.942)
    assert metrics["clip_dual"].item() == pytest.approx(0.1)
    # two micro-batches normalised by the mini-batch count add up to the whole-batch mean
    halves = [slice(0, 4), slice(4, 8)]
    parts = [policy_loss(lp_old[s], _lp()[s], ADV.double()[s], MASK[s], num_tokens=7)[0] for s in halves]
    assert sum(parts).item() == pytest.approx(19.42 / 7)


def test_log_ratio_is_clamped_at_20():
    # r = exp(clamp(-50)) = exp(-20): L1 = -2.06e-9 beats L2 = -0.8
    loss, *_ = clipped_surrogate(torch.zeros(1), torch.tensor([-50.0]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(-math.exp(-20), rel=1e-5)


def test_token_mean_ignores_nan_padding_and_empty_mask():
    values = torch.tensor([1.0, 3.0, float("nan")])
    assert token_mean(values, torch.tensor([1, 1, 0])).item() == 2.0
    assert token_mean(values, torch.zeros(3)).item() == 0.0


def test_truncated_is_weights():
    lp_old = torch.tensor([math.log(0.5), math.log(3.0), 0.0, 100.0], requires_grad=True)
    w = truncated_is_weights(lp_old, torch.zeros(4), cap=2.0)
    torch.testing.assert_close(w, torch.tensor([0.5, 2.0, 1.0, 2.0]))
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(lp_old, torch.zeros(4), cap=0.0)


def test_is_weights_multiply_the_per_token_loss():
    lp_old = torch.zeros(3)
    lp = torch.log(torch.tensor([1.1, 1.5, 1.0]))
    adv = torch.tensor([1.0, 1.0, -1.0])
    w = torch.tensor([0.5, 2.0, 1.0])
    loss, _ = policy_loss(lp_old, lp, adv, torch.ones(3), is_weights=w)
    # (-1.1 * 0.5 - 1.28 * 2 + 1.0) / 3
    assert loss.item() == pytest.approx((-0.55 - 2.56 + 1.0) / 3, rel=1e-6)
