"""OCC ``code`` aggregation with the reference semantics: the mean over the padded ``[B, R]`` response
tensor of the micro-batch, padding counting as zeros, with B its sequences and R the configured maximum
response length (``rollout.max_new_tokens``: verl pads every response to it, and the reference's
``loss_func`` divides by ``responses.size(1)``), in the trainer's loss path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_diagnostics import TEMPERATURE, make_samples, tiny_model

from occ_fast.algorithm import LossConfig, occ_coefficient, padded_response_entries
from occ_fast.policy.batching import make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.training.update import update_mini_batch
from occ_fast.training.update_stats import UpdateStats

# Three sequences, responses of 2, 4 and 3 tokens: B = 3, R = 4, B x R = 12 entries, 9 valid.
#   d_rl  = [0.2, -0.1 | 0.4, 0.1, 0.3, -0.2 | 0.5, 0.1, -0.3]
#   d_mtp = [1.0,  0.5 | -2.0, 2.0, -1.0, 0.4 | 1.0, -0.5, 0.6]
#   ratios d_rl / d_mtp: 0.2, -0.2, -0.2, 0.05, -0.3, -0.5, 0.5, -0.2, -0.5 -> sum -1.15
D_RL = torch.tensor([0.2, -0.1, 0.4, 0.1, 0.3, -0.2, 0.5, 0.1, -0.3], dtype=torch.float64)
D_MTP = torch.tensor([1.0, 0.5, -2.0, 2.0, -1.0, 0.4, 1.0, -0.5, 0.6], dtype=torch.float64)
RESPONSE_LENGTHS = (2, 4, 3)
RATIO_SUM = -1.15


def test_code_on_scored_tokens_divides_by_b_times_r():
    lp_old = torch.full((9,), -1.0, dtype=torch.float64)
    mask = torch.ones(9, dtype=torch.bool)
    stats = occ_coefficient(
        lp_old, lp_old + D_RL, lp_old + D_MTP, mask, lam_plus=0.5, aggregation="code", padded_entries=12
    )
    assert stats.lam.item() == pytest.approx(0.5 * RATIO_SUM / 12, rel=1e-6)
    masked = occ_coefficient(
        lp_old, lp_old + D_RL, lp_old + D_MTP, mask, lam_plus=0.5, aggregation="code_masked"
    )
    assert masked.lam.item() == pytest.approx(0.5 * RATIO_SUM / 9, rel=1e-6)


def test_code_on_scored_tokens_equals_code_on_the_padded_tensor():
    padded_rl = torch.zeros(3, 4, dtype=torch.float64)
    padded_mtp = torch.zeros(3, 4, dtype=torch.float64)
    valid = torch.zeros(3, 4, dtype=torch.bool)
    start = 0
    for b, n in enumerate(RESPONSE_LENGTHS):
        padded_rl[b, :n], padded_mtp[b, :n] = D_RL[start : start + n], D_MTP[start : start + n]
        valid[b, :n] = True
        start += n
    old = torch.full((3, 4), -2.0, dtype=torch.float64)
    reference = occ_coefficient(old, old + padded_rl, old + padded_mtp, valid, aggregation="code")
    assert reference.lam.item() == pytest.approx(RATIO_SUM / 12, rel=1e-6)
    flat_old = torch.full((9,), -2.0, dtype=torch.float64)
    flat = occ_coefficient(
        flat_old, flat_old + D_RL, flat_old + D_MTP, torch.ones(9), aggregation="code", padded_entries=12
    )
    assert flat.lam.item() == pytest.approx(reference.lam.item(), rel=1e-6)


@pytest.mark.parametrize(("sequences", "max_new_tokens"), [(1, 1), (3, 40), (7, 8192)])
def test_padded_response_entries_is_b_times_the_configured_maximum(sequences, max_new_tokens):
    assert padded_response_entries(sequences, max_new_tokens) == sequences * max_new_tokens


MAX_NEW_TOKENS = 24  # above every response of make_samples (2-8 tokens), as a rollout limit is


def code_lam_in_training(batch_size: int | None) -> tuple[list[float], list[float]]:
    """The ``code`` coefficients update_mini_batch applies, and their hand computation from the
    per-token log-probs, the micro-batch's sequence count B and the configured maximum length."""
    model = tiny_model(num_mtp=1, seed=2)
    samples = make_samples(n=6, seed=9)
    micros = make_micro_batches(samples, token_budget=40, batch_size=batch_size, pad_id=0)
    per_micro_samples = _samples_of(micros, samples)
    gen = torch.Generator().manual_seed(4)
    hand, olds = [], []
    with torch.no_grad():
        for micro, members in zip(micros, per_micro_samples):
            out = policy_logprobs(model, micro, temperature=TEMPERATURE)
            lp_old = out.heads[0].logprob + 0.2 * torch.randn(out.heads[0].logprob.shape, generator=gen)
            olds.append(lp_old)
            d_rl = out.heads[0].logprob.double() - lp_old.double()
            d_mtp = out.heads[1].logprob.double() - lp_old.double()
            valid = out.mtp_mask(1)
            ratio = (d_rl * d_mtp / (d_mtp * d_mtp + 1e-8))[valid].sum()
            hand.append(float(0.7 * ratio / (len(members) * MAX_NEW_TOKENS)))
    run = SimpleNamespace(
        cfg=SimpleNamespace(
            rollout=SimpleNamespace(temperature=TEMPERATURE, max_new_tokens=MAX_NEW_TOKENS),
            optim=SimpleNamespace(grad_clip=1.0),
        ),
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        loss_cfg=LossConfig(mtp_regime="occ", occ_aggregation="code", occ_lam_plus=0.7),
        autocast_dtype=None,
    )
    stats = UpdateStats()
    update_mini_batch(run, samples, [(m, True) for m in micros], olds, stats)
    return _applied_lams(stats), hand


def _samples_of(micros, samples):
    """Which samples each micro-batch holds, found by their token ids."""
    out = []
    remaining = list(samples)
    for micro in micros:
        members = []
        for row in micro.input_ids.tolist():
            for s in list(remaining):
                ids = s.prompt_ids + s.response_ids
                if any(row[i : i + len(ids)] == ids for i in range(len(row) - len(ids) + 1)):
                    members.append(s)
                    remaining.remove(s)
        assert len(members) == micro.num_samples
        out.append(members)
    return out


def _applied_lams(stats: UpdateStats) -> list[float]:
    """Every micro-batch's coefficient, in order (one mini-batch: all of them are its first)."""
    return [float(lam) for lam in stats.lams.first + stats.lams.applied]


@pytest.mark.parametrize("batch_size", [None, 2])
def test_training_applies_the_reference_code_coefficient(batch_size):
    applied, hand = code_lam_in_training(batch_size)
    assert any(abs(h) > 1e-4 for h in hand)
    assert applied == pytest.approx(hand, rel=1e-5, abs=1e-9)
