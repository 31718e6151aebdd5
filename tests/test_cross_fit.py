"""Cross-fitted exact diagnostics: the halves keep prompts whole, the same-sample ``c`` agrees with
``exact_gradient_stats``, the measured one-step gain is what first order predicts from ``c_cross``,
and in a null (advantages independent of the tokens) the cross-fitted ``c`` centres on 0 while the
same-sample ``c`` does not."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import pytest
import torch
from test_diagnostics import TEMPERATURE, VOCAB, make_samples, mini_batch, stats, tiny_model

from occ_fast.algorithm import LossConfig, compute_loss
from occ_fast.config import OptimConfig
from occ_fast.monitoring.cross_fit import cross_fitted_stats, one_step_gain, prompt_halves
from occ_fast.policy.batching import Sample, make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.training.master_weights import MasterAdamW, fp32_weights
from occ_fast.training.optim import build_optimizer
from occ_fast.training.update import update_mini_batch
from occ_fast.training.update_stats import UpdateStats


def null_batch(seed: int, prompts: int = 12, n: int = 2) -> list[Sample]:
    """Random tokens, N(0, 1) advantages drawn apart from them: the true ``c`` is 0."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(prompts):
        prompt = torch.randint(3, VOCAB, (4,), generator=gen).tolist()
        for _ in range(n):
            response = torch.randint(3, VOCAB, (6,), generator=gen).tolist()
            advantage = float(torch.randn((), generator=gen))
            samples.append(Sample(prompt, response, -torch.rand(6, generator=gen), advantage))
    return samples


def own_logprobs(model, micros):
    with torch.no_grad():
        return [policy_logprobs(model, m, temperature=TEMPERATURE).heads[0].logprob for m in micros]


def sign_test_p(positive: int, n: int) -> float:
    """Two-sided exact binomial p-value of ``positive`` successes in ``n`` at 1/2."""
    k = min(positive, n - positive)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_prompt_halves_keep_each_prompt_in_one_half_and_alternate():
    samples = null_batch(seed=1, prompts=5, n=3)
    micros = make_micro_batches(samples, token_budget=30)
    assert len(micros) > 2  # a prompt's completions are spread over micro-batches
    prompt_of = {}
    for micro, half in zip(micros, prompt_halves(micros)):
        for row in range(micro.input_ids.shape[0]):
            starts = (micro.position_ids[row] == 0).nonzero().flatten().tolist() + [micro.input_ids.shape[1]]
            for a, b in zip(starts, starts[1:]):
                scored = micro.response_mask[row, a:b]
                if scored.any():
                    key = tuple(
                        micro.input_ids[row, a:b][~scored & micro.attention_mask[row, a:b].bool()].tolist()
                    )
                    side = set(half[row, a:b][scored].tolist())
                    assert len(side) == 1
                    prompt_of.setdefault(key, set()).update(side)
    assert all(len(sides) == 1 for sides in prompt_of.values())
    assert sorted(prompt_of) == sorted({tuple(s.prompt_ids) for s in samples})
    in_a = [prompt_of[key].pop() for key in sorted(prompt_of)]
    assert in_a == [i % 2 == 0 for i in range(5)]


def test_same_sample_values_agree_with_exact_gradient_stats():
    model = tiny_model(num_mtp=1, seed=2)
    cfg = LossConfig(mtp_regime="occ")
    micros, olds, num_tokens, mtp_tokens = mini_batch(model, make_samples(seed=4))
    exact = stats(model, micros, olds, cfg, num_tokens, mtp_tokens)
    params = [p for p in model.base.parameters() if p.requires_grad]
    got = cross_fitted_stats(model, micros, olds, params, loss_cfg=cfg, temperature=TEMPERATURE)
    assert got["c"] == pytest.approx(exact["exact/c"], rel=1e-5)
    assert got["v2"] == pytest.approx(exact["exact/v2"], rel=1e-5)


def test_measured_one_step_gain_is_the_first_order_prediction():
    """SGD with lr eta and a fixed lam: the MTP term lowers half B's loss by eta * lam *
    <g_RL^B, g_MTP^A> to first order; averaged both ways, eta * lam * c_cross."""
    model = tiny_model(num_mtp=1, seed=5)
    samples = null_batch(seed=3)
    for i, s in enumerate(samples):  # advantages that follow the tokens: c_cross is not 0
        samples[i] = Sample(
            s.prompt_ids, s.response_ids, s.rollout_logprobs, 1.0 if s.response_ids[0] % 2 else -1.0
        )
    micros = make_micro_batches(samples, token_budget=80)
    olds = own_logprobs(model, micros)
    cfg = LossConfig(mtp_regime="policy", mtp_coef=0.5)
    params = [p for p in model.base.parameters() if p.requires_grad]
    c_cross = cross_fitted_stats(model, micros, olds, params, loss_cfg=cfg, temperature=TEMPERATURE)[
        "c_cross"
    ]
    eta = 1e-3
    before = [p.detach().clone() for p in model.parameters()]
    gain = one_step_gain(model, torch.optim.SGD(model.parameters(), lr=eta), micros, olds, loss_cfg=cfg,
                         temperature=TEMPERATURE, max_response_length=8)  # fmt: skip
    assert abs(c_cross) > 1e-3
    assert gain == pytest.approx(eta * 0.5 * c_cross, rel=0.05)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # restored
    none = LossConfig(mtp_regime="policy", mtp_coef=0.0)
    assert one_step_gain(model, torch.optim.SGD(model.parameters(), lr=eta), micros, olds, loss_cfg=none,
                         temperature=TEMPERATURE, max_response_length=8) == 0.0  # fmt: skip


def test_null_cross_fitted_c_centres_on_zero_while_same_sample_c_is_positive():
    model = tiny_model(num_mtp=1, seed=3)
    params = [p for p in model.base.parameters() if p.requires_grad]
    same, cross = [], []
    for batch in range(12):
        micros = make_micro_batches(null_batch(seed=100 + batch), token_budget=80)
        got = cross_fitted_stats(model, micros, own_logprobs(model, micros), params,
                                 loss_cfg=LossConfig(mtp_regime="occ"), temperature=TEMPERATURE)  # fmt: skip
        same.append(got["c"])
        cross.append(got["c_cross"])
    assert sign_test_p(sum(c > 0 for c in same), len(same)) < 0.01
    assert statistics.mean(same) > 5 * statistics.stdev(same) / math.sqrt(len(same))
    assert sign_test_p(sum(c > 0 for c in cross), len(cross)) > 0.05
    assert abs(statistics.mean(cross)) < 2 * statistics.stdev(cross) / math.sqrt(len(cross))


def test_oracle_loss_is_the_policy_loss_at_its_coefficient():
    model = tiny_model(num_mtp=1, seed=6)
    (micro,) = make_micro_batches(null_batch(seed=7, prompts=3), token_budget=200)
    grads = []
    for cfg, lam in (
        (LossConfig(mtp_regime="oracle"), 0.3),
        (LossConfig(mtp_regime="policy", mtp_coef=0.3), None),
    ):
        out = policy_logprobs(model, micro, temperature=TEMPERATURE)
        lp = out.heads[0].logprob
        loss, _ = compute_loss(cfg, (lp - 0.1).detach(), lp, out.gather(micro.advantages), torch.ones_like(lp),
                               lp_mtp=[out.heads[1].logprob], mtp_masks=[out.mtp_mask(1)], oracle_lam=lam)  # fmt: skip
        grads.append(torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))
    for a, b in zip(*grads):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-5, atol=1e-7))
    with pytest.raises(ValueError, match="oracle_lam"):
        compute_loss(LossConfig(mtp_regime="oracle"), lp, lp, lp, torch.ones_like(lp),
                     lp_mtp=[lp], mtp_masks=[torch.ones_like(lp)])  # fmt: skip


def test_oracle_regime_trains_with_lam_plus_c_cross_over_v2():
    model = tiny_model(num_mtp=1, seed=8)
    samples = null_batch(seed=9, prompts=6)
    micros = make_micro_batches(samples, token_budget=80)
    olds = own_logprobs(model, micros)
    cfg = LossConfig(mtp_regime="oracle", occ_lam_plus=0.7)
    params = [p for p in model.base.parameters() if p.requires_grad]
    want = cross_fitted_stats(model, micros, olds, params, loss_cfg=cfg, temperature=TEMPERATURE)
    run = SimpleNamespace(
        cfg=SimpleNamespace(
            rollout=SimpleNamespace(temperature=TEMPERATURE, max_new_tokens=8),
            optim=SimpleNamespace(grad_clip=1.0),
        ),  # fmt: skip
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        loss_cfg=cfg,
        autocast_dtype=None,
    )
    stats = UpdateStats()
    update_mini_batch(run, samples, [(m, True) for m in micros], olds, stats)
    got = stats.summary()
    assert abs(want["c_cross"]) > 1e-4
    assert got["oracle/lam"] == pytest.approx(0.7 * want["c_cross"] / want["v2"], rel=1e-5)
    assert got["oracle/v2_cross"] == pytest.approx(want["v2_cross"], rel=1e-5)


def test_lam_star_cross_is_0_when_the_halves_disagree_on_the_mtp_direction():
    """Two prompts with the same response, advantage +1 on one and -1 on the other: the halves'
    MTP gradients point opposite ways (``v2_cross < 0``), so no MTP weight is supported and
    ``lam_star_cross`` is 0, not the negative ratio ``c_cross / v2_cross``. With both advantages +1
    the halves agree and it is that ratio."""
    model = tiny_model(num_mtp=1, seed=2)
    params = [p for p in model.base.parameters() if p.requires_grad]
    response = [5, 9, 14, 7, 22, 3]

    def measured(advantages):
        samples = [
            Sample(prompt, response, -torch.full((6,), 0.5), adv)
            for prompt, adv in zip(([4, 8, 15, 16], [23, 42, 11, 6]), advantages, strict=True)
        ]
        micros = make_micro_batches(samples, token_budget=80)
        return cross_fitted_stats(model, micros, own_logprobs(model, micros), params,
                                  loss_cfg=LossConfig(mtp_regime="occ"), temperature=TEMPERATURE)  # fmt: skip

    opposed = measured((1.0, -1.0))
    assert opposed["v2_cross"] < 0 and opposed["c_cross"] != 0
    assert opposed["lam_star_cross"] == 0.0
    agreed = measured((1.0, 1.0))
    assert agreed["v2_cross"] > 0
    assert agreed["lam_star_cross"] == pytest.approx(agreed["c_cross"] / agreed["v2_cross"], rel=1e-12)


def test_one_step_gain_restores_the_fp32_master_weights_of_a_bf16_model():
    """A bf16 model trains its fp32 masters: the measured trial steps must leave them as they were,
    or the diagnostic's steps stay in the run (the compute copies alone would look restored)."""
    model = tiny_model(num_mtp=1, seed=5).to(torch.bfloat16)
    samples = [Sample(s.prompt_ids, s.response_ids, s.rollout_logprobs, 1.0 if s.response_ids[0] % 2 else -1.0)
               for s in null_batch(seed=3)]  # fmt: skip
    micros = make_micro_batches(samples, token_budget=80)
    olds = own_logprobs(model, micros)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2))
    assert isinstance(optimizer, MasterAdamW)
    with fp32_weights(optimizer):
        masters = [p.detach().clone() for p in model.parameters()]
    compute = [p.detach().clone() for p in model.parameters()]
    one_step_gain(model, optimizer, micros, olds, loss_cfg=LossConfig(mtp_regime="policy", mtp_coef=0.5),
                  temperature=TEMPERATURE, max_response_length=8, autocast_dtype=torch.bfloat16)  # fmt: skip
    with fp32_weights(optimizer):
        assert all(torch.equal(p, m) for p, m in zip(model.parameters(), masters, strict=True))
    assert all(torch.equal(p, c) for p, c in zip(model.parameters(), compute, strict=True))
    assert not optimizer.state  # no AdamW moments from the trial steps either
