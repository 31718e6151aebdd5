"""Exact-gradient diagnostics: c and v2 against a brute-force computation, no side effects on training,
the detach regimes, the proxy as training logs it, and the proxy/exact correlation summary."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from model_helpers import small_qwen2_mtp
from torch import nn

from occ_fast.algorithm import LossConfig, compute_loss, padded_response_entries, policy_loss
from occ_fast.model import MTPModel
from occ_fast.monitoring.cross_fit import accumulate_gradients
from occ_fast.monitoring.diagnostics import exact_gradient_stats, proxy_exact_correlation
from occ_fast.policy.batching import Sample, make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.training.update import update_mini_batch
from occ_fast.training.update_stats import UpdateStats

VOCAB = 61
TEMPERATURE = 0.9
MAX_NEW_TOKENS = 16  # the rollout limit: above every response of make_samples (2-8 tokens)


def tiny_model(num_mtp: int = 2, seed: int = 0, attention_dropout: float = 0.0, **kwargs) -> MTPModel:
    return small_qwen2_mtp(
        vocab=VOCAB, num_mtp=num_mtp, seed=seed, attention_dropout=attention_dropout, **kwargs
    )


def make_samples(n: int = 8, seed: int = 0) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        prompt = torch.randint(3, VOCAB, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen)
        response = torch.randint(3, VOCAB, (int(torch.randint(2, 9, (1,), generator=gen)),), generator=gen)
        rollout = -torch.rand(len(response), generator=gen) * 4.0
        samples.append(Sample(prompt.tolist(), response.tolist(), rollout, float(i % 3 - 1) * 0.8))
    return samples


def mini_batch(model: MTPModel, samples: list[Sample], seed: int = 1):
    """Micro-batches, an ``lp_old`` displaced from the current log-probs (so ratios clip and the proxy
    is non-zero) and the token counts, as ``update_mini_batch`` computes them."""
    micros = make_micro_batches(samples, token_budget=40)
    assert len(micros) > 1
    gen = torch.Generator().manual_seed(seed)
    olds = []
    with torch.no_grad():
        for micro in micros:
            lp = policy_logprobs(model, micro, temperature=TEMPERATURE).heads[0].logprob
            olds.append(lp + 0.3 * torch.randn(lp.shape, generator=gen))
    num_tokens = float(sum(len(s.response_ids) for s in samples))
    mtp_tokens = [float(max(sum(s.mtp_rows(k) for s in samples), 1)) for k in range(1, model.num_mtp + 1)]
    return micros, olds, num_tokens, mtp_tokens


def stats(model, micros, olds, cfg, num_tokens, mtp_tokens, **kwargs):
    return exact_gradient_stats(
        model,
        micros,
        olds,
        loss_cfg=cfg,
        num_tokens=num_tokens,
        mtp_num_tokens=mtp_tokens,
        temperature=TEMPERATURE,
        max_response_length=MAX_NEW_TOKENS,
        **kwargs,
    )


def brute_force_c_v2(model, micros, olds, cfg, num_tokens, mtp_tokens, params):
    """Whole mini-batch losses summed first, then one autograd.grad each, flattened, dot products in fp64."""
    clip = {"eps_low": cfg.eps_low, "eps_high": cfg.eps_high, "dual_clip_c": cfg.dual_clip_c}
    main_total = mtp_total = 0.0
    for micro, lp_old in zip(micros, olds):
        out = policy_logprobs(model, micro, temperature=TEMPERATURE)
        adv = out.gather(micro.advantages)
        weights = None
        if cfg.tis_cap is not None:
            log_ratio = lp_old - out.gather(micro.rollout_logprobs)
            weights = torch.exp(torch.clamp(log_ratio, max=math.log(cfg.tis_cap)))
        ones = torch.ones_like(lp_old)
        main, _ = policy_loss(
            lp_old, out.heads[0].logprob, adv, ones, num_tokens=num_tokens, is_weights=weights, **clip
        )
        mtp, _ = policy_loss(
            lp_old,
            out.heads[1].logprob,
            adv,
            out.mtp_mask(1),
            num_tokens=mtp_tokens[0],
            is_weights=weights,
            **clip,
        )
        main_total, mtp_total = main_total + main, mtp_total + mtp

    def flat(loss, retain):
        grads = torch.autograd.grad(
            loss, params, retain_graph=retain, allow_unused=True, materialize_grads=True
        )
        return torch.cat([g.reshape(-1) for g in grads]).double()

    g_rl, g_mtp = flat(main_total, True), flat(mtp_total, False)
    return float(g_rl @ g_mtp), float(g_mtp @ g_mtp), float(g_rl @ g_rl)


@pytest.mark.parametrize("tis_cap", [None, 1.5])
def test_exact_c_and_v2_match_brute_force(tis_cap):
    model = tiny_model().train()
    cfg = LossConfig(mtp_regime="occ", occ_lam_plus=0.5, tis_cap=tis_cap)
    micros, olds, num_tokens, mtp_tokens = mini_batch(model, make_samples())
    out = stats(model, micros, olds, cfg, num_tokens, mtp_tokens)
    c, v2, rl2 = brute_force_c_v2(
        model, micros, olds, cfg, num_tokens, mtp_tokens, list(model.base.parameters())
    )
    assert v2 > 0 and abs(c) > 1e-3 * math.sqrt(rl2 * v2)  # a meaningful, non-degenerate case
    assert out["exact/c"] == pytest.approx(c, rel=1e-4)
    assert out["exact/v2"] == pytest.approx(v2, rel=1e-4)
    assert out["exact/lam_star"] == pytest.approx(c / v2, rel=2e-4)
    assert out["exact/cosine"] == pytest.approx(c / math.sqrt(rl2 * v2), rel=2e-4)
    assert out["exact/time_s"] > 0 and 0 < out["exact/time_ratio"] < math.inf
    assert {"exact/c_cross", "exact/v2_cross", "exact/c_ce", "exact/c_ce_cross"} <= out.keys()


def test_shared_params_restrict_the_measurement():
    model = tiny_model(num_mtp=1).train()
    cfg = LossConfig(mtp_regime="policy")
    micros, olds, num_tokens, mtp_tokens = mini_batch(model, make_samples(seed=2))
    params = list(model.base.model.layers.parameters())
    out = stats(model, micros, olds, cfg, num_tokens, mtp_tokens, shared_params=params)
    c, v2, _ = brute_force_c_v2(model, micros, olds, cfg, num_tokens, mtp_tokens, params)
    assert out["exact/c"] == pytest.approx(c, rel=1e-4)
    assert out["exact/v2"] == pytest.approx(v2, rel=1e-4)


def test_detach_regimes_give_zero_mtp_gradient_on_the_trunk():
    samples = make_samples(seed=3)
    isolated = tiny_model(num_mtp=1, detach_trunk=True, detach_lm_head=True).train()
    cfg = LossConfig(mtp_regime="detach")
    micros, olds, num_tokens, mtp_tokens = mini_batch(isolated, samples)
    out = stats(isolated, micros, olds, cfg, num_tokens, mtp_tokens)
    assert out["exact/v2"] == 0.0 and out["exact/c"] == 0.0
    assert out["exact/lam_star"] == 0.0 and out["exact/cosine"] == 0.0

    # detach without detach_lm_head: the MTP term still reaches lm_head, and only lm_head.
    model = tiny_model(num_mtp=1, detach_trunk=True).train()
    micros, olds, num_tokens, mtp_tokens = mini_batch(model, samples)
    whole = stats(model, micros, olds, cfg, num_tokens, mtp_tokens)
    head_only = stats(
        model, micros, olds, cfg, num_tokens, mtp_tokens, shared_params=[model.base.lm_head.weight]
    )
    assert whole["exact/v2"] > 0
    assert whole["exact/v2"] == pytest.approx(head_only["exact/v2"], rel=1e-6)
    assert whole["exact/c"] == pytest.approx(head_only["exact/c"], rel=1e-5)


@pytest.mark.parametrize(("aggregation", "form"), [("paper", "advantage"), ("code", "loss")])
def test_proxy_equals_what_training_logs(aggregation, form):
    model = tiny_model().train()
    cfg = LossConfig(mtp_regime="occ", occ_lam_plus=0.3, occ_aggregation=aggregation, occ_form=form)
    micros, olds, num_tokens, mtp_tokens = mini_batch(model, make_samples(seed=4))
    out = stats(model, micros, olds, cfg, num_tokens, mtp_tokens)
    lams, c_hat, v2_hat = [], 0.0, 0.0
    for micro, lp_old in zip(micros, olds):
        heads = policy_logprobs(model, micro, temperature=TEMPERATURE)
        _, metrics = compute_loss(
            cfg,
            lp_old,
            heads.heads[0].logprob,
            heads.gather(micro.advantages),
            torch.ones_like(lp_old),
            lp_mtp=[h.logprob for h in heads.heads[1:]],
            mtp_masks=[heads.mtp_mask(k) for k in (1, 2)],
            num_tokens=num_tokens,
            mtp_num_tokens=mtp_tokens,
            occ_entries=padded_response_entries(micro.num_samples, MAX_NEW_TOKENS),
        )
        lams.append(float(metrics["mtp1/lam"]))
        c_hat += float(metrics["mtp1/c_hat"]) / len(micros)
        v2_hat += float(metrics["mtp1/v2_hat"]) / len(micros)
    assert abs(out["exact/lam_proxy"]) > 1e-4
    assert out["exact/lam_proxy"] == pytest.approx(sum(lams) / len(lams), rel=1e-5)
    assert out["exact/c_hat"] == pytest.approx(c_hat, rel=1e-5)
    assert out["exact/v2_hat"] == pytest.approx(v2_hat, rel=1e-5)


def test_no_side_effects_on_grads_params_mode_or_rng():
    model = tiny_model(attention_dropout=0.2).eval()
    cfg = LossConfig(mtp_regime="occ")
    micros, olds, num_tokens, mtp_tokens = mini_batch(model, make_samples(seed=5))
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad = None if i % 2 else torch.randn_like(p)
    before = [(p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in params]
    rng = torch.get_rng_state()
    stats(model, micros, olds, cfg, num_tokens, mtp_tokens)
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for p, (value, grad) in zip(params, before):
        assert torch.equal(p.detach(), value)
        assert (p.grad is None) == (grad is None)
        assert grad is None or torch.equal(p.grad, grad)


def test_training_is_bit_identical_with_or_without_diagnostics():
    """update_mini_batch after the diagnostics gives the same weights and RNG stream as without them,
    with dropout on, so a diagnostic that drew random numbers would show."""
    samples = make_samples(seed=6)
    results = []
    for with_diagnostics in (False, True):
        model = tiny_model(attention_dropout=0.2, seed=7)
        micros, olds, num_tokens, mtp_tokens = mini_batch(model, samples)
        cfg = LossConfig(mtp_regime="occ")
        run = SimpleNamespace(
            cfg=SimpleNamespace(
                rollout=SimpleNamespace(temperature=TEMPERATURE, max_new_tokens=16),
                optim=SimpleNamespace(grad_clip=1.0),
            ),
            model=model,
            optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
            loss_cfg=cfg,
            autocast_dtype=None,
        )
        torch.manual_seed(11)
        if with_diagnostics:  # the measured one-step gain steps the optimizer, then restores it
            stats(model, micros, olds, cfg, num_tokens, mtp_tokens, optimizer=run.optimizer)
        rng = torch.get_rng_state()
        update_mini_batch(run, samples, [(m, True) for m in micros], olds, UpdateStats())
        assert not torch.equal(torch.get_rng_state(), rng)  # the update itself does draw (dropout)
        results.append((copy.deepcopy(model.state_dict()), torch.rand(4)))
    (weights_a, draws_a), (weights_b, draws_b) = results
    assert torch.equal(draws_a, draws_b)
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


def test_gradient_sums_do_not_share_aliased_autograd_outputs():
    """autograd.grad hands one tensor to both inputs of an add; summing in place must not mix them."""
    w1, w2 = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    weights = torch.arange(3.0)
    sums = [None, None]
    for _ in range(2):
        accumulate_gradients(sums, ((w1 + w2) * weights).sum(), [w1, w2], retain_graph=False)
    assert torch.equal(sums[0], 2 * weights) and torch.equal(sums[1], 2 * weights)


def test_bad_inputs_fail_clearly():
    model = tiny_model(num_mtp=1)
    cfg = LossConfig(mtp_regime="occ")
    micros, olds, num_tokens, mtp_tokens = mini_batch(model, make_samples(seed=8))
    with pytest.raises(ValueError, match="no micro-batches"):
        stats(model, [], [], cfg, num_tokens, mtp_tokens)
    with pytest.raises(ValueError, match="old log-prob"):
        stats(model, micros, olds[:-1], cfg, num_tokens, mtp_tokens)
    with pytest.raises(ValueError, match="one count per MTP head"):
        stats(model, micros, olds, cfg, num_tokens, [])
    with pytest.raises(ValueError, match="MTP regime"):
        stats(model, micros, olds, LossConfig(mtp_regime="none"), num_tokens, mtp_tokens)


def test_proxy_exact_correlation_on_hand_made_rows():
    stars, proxies = [-2.0, -1.0, 1.0, 2.0], [-1.0, 1.0, 0.5, 2.0]
    rows = [{"exact/lam_star": x, "exact/lam_proxy": y, "reward/mean": 0.5} for x, y in zip(stars, proxies)]
    rows.insert(1, {"reward/mean": 0.4, "mtp/lam": 0.1})  # a step without diagnostics
    rows.append({"exact/lam_star": math.nan, "exact/lam_proxy": 1.0})
    rows.append({"exact/lam_star": 0.0, "exact/lam_proxy": 5.0, "exact/v2": 0.0})  # lam* undefined
    out = proxy_exact_correlation(rows)
    # by hand: means 0 and 0.625; sum dx*dy = 5.5, sum dx^2 = 10, sum dy^2 = 4.6875
    assert out["exact/rows"] == 4
    assert out["exact/proxy_pearson"] == pytest.approx(5.5 / math.sqrt(10 * 4.6875), rel=1e-12)
    assert out["exact/proxy_sign_agreement"] == 0.75  # only (-1, 1) disagrees

    flipped = proxy_exact_correlation([{"exact/lam_star": x, "exact/lam_proxy": -3 * x} for x in stars])
    assert (
        flipped["exact/proxy_pearson"] == pytest.approx(-1.0) and flipped["exact/proxy_sign_agreement"] == 0.0
    )

    empty = proxy_exact_correlation([{"reward/mean": 1.0}])
    assert empty["exact/rows"] == 0 and math.isnan(empty["exact/proxy_pearson"])
    assert math.isnan(empty["exact/proxy_sign_agreement"])
    constant = proxy_exact_correlation([{"exact/lam_star": x, "exact/lam_proxy": 0.0} for x in stars])
    assert math.isnan(constant["exact/proxy_pearson"]) and constant["exact/proxy_sign_agreement"] == 0.0
