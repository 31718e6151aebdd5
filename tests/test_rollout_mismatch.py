"""Rollout-vs-trainer mismatch: the metrics and the sequence-level importance weights, by hand, and
both in a real training run (metrics.jsonl, plot, step line)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from occ_fast.algorithm import LossConfig, compute_loss
from occ_fast.algorithm.rollout_mismatch import MismatchLog, rollout_is_weights
from occ_fast.algorithm.sequences import sequence_index
from occ_fast.config import ConfigError, parse_config
from occ_fast.monitoring.report import step_line
from occ_fast.train import train

T = torch.float64


def test_mismatch_log_by_hand():
    log = MismatchLog(threshold=0.2)
    # micro-batch 1: diff = lp_rollout - lp_old = [-0.1, 0.0 | 0.3]
    log.add(
        torch.tensor([-1.0, -2.0, -0.5], dtype=T),
        torch.tensor([-1.1, -2.0, -0.2], dtype=T),
        torch.tensor([0, 0, 1]),
        2,
    )
    # micro-batch 2: diff = [0.5, -0.05 | 0.05]
    log.add(
        torch.tensor([-3.0, -1.0, -1.0], dtype=T),
        torch.tensor([-2.5, -1.05, -0.95], dtype=T),
        torch.tensor([0, 0, 1]),
        2,
    )
    diffs = [-0.1, 0.0, 0.3, 0.5, -0.05, 0.05]
    got = log.summary()
    assert got["mismatch/abs_diff_mean"] == pytest.approx(1.0 / 6)
    assert got["mismatch/abs_diff_max"] == pytest.approx(0.5)
    assert got["mismatch/kl_k1"] == pytest.approx(0.7 / 6)
    assert got["mismatch/kl_k3"] == pytest.approx(sum(math.exp(-d) - 1 + d for d in diffs) / 6)
    assert got["mismatch/frac_above_threshold"] == pytest.approx(2 / 6)  # 0.3 and 0.5
    # sequence log ratios sum(lp_old - lp_rollout): 0.1, -0.3 | -0.45, -0.05
    assert got["mismatch/seq_log_ratio_min"] == pytest.approx(-0.45)
    assert got["mismatch/seq_log_ratio_max"] == pytest.approx(0.1)
    # per-sequence mean |diff|: 0.05, 0.3 | 0.275, 0.05
    assert got["mismatch/seq_abs_diff_max"] == pytest.approx(0.3)
    assert MismatchLog().summary() == {}


def test_mismatch_log_k3_is_never_negative_and_zero_without_mismatch():
    gen = torch.Generator().manual_seed(0)
    lp_old = -torch.rand(50, generator=gen, dtype=T) * 5
    log = MismatchLog()
    log.add(lp_old, lp_old + 0.3 * torch.randn(50, generator=gen, dtype=T), torch.arange(50) // 10, 5)
    assert log.summary()["mismatch/kl_k3"] > 0
    same = MismatchLog()
    same.add(lp_old, lp_old.clone(), torch.arange(50) // 10, 5)
    assert all(v == 0.0 for v in same.summary().values())


# log r = lp_old - lp_rollout = [0.5, -1.0 | 0.0, 1.0]; sequence sums -0.5 and 1.0
LP_OLD = torch.tensor([-1.0, -2.0, -0.5, -1.0], dtype=T)
LP_ROLLOUT = torch.tensor([-1.5, -1.0, -0.5, -2.0], dtype=T)
SEQ = torch.tensor([0, 0, 1, 1])
ONES = torch.ones(4)


def weights(**kwargs):
    return rollout_is_weights(
        LP_OLD, LP_ROLLOUT, kwargs.pop("mask", ONES), sequence_ids=SEQ, num_sequences=2, **kwargs
    )


def test_importance_weights_by_hand():
    assert weights(cap=None) is None
    token = weights(cap=2.0)
    assert token.tolist() == pytest.approx([math.exp(0.5), math.exp(-1.0), 1.0, 2.0])
    sequence = weights(cap=2.0, level="sequence")
    assert sequence.tolist() == pytest.approx([math.exp(-0.5)] * 2 + [2.0] * 2)
    band = weights(cap=None, mask_band=(0.5, 2.0))  # ratios e^-0.5 = 0.61 (kept), e^1 = 2.72 (dropped)
    assert band.tolist() == [1.0, 1.0, 0.0, 0.0]
    both = weights(cap=2.0, mask_band=(0.5, 2.0))
    assert both.tolist() == pytest.approx([math.exp(0.5), math.exp(-1.0), 0.0, 0.0])
    narrow = weights(cap=None, mask_band=(0.7, 1.5))  # e^-0.5 = 0.61 leaves it too
    assert narrow.tolist() == [0.0] * 4
    # a token outside the mask does not count: sequence 1's ratio becomes e^0 = 1, inside the band
    masked = weights(cap=None, mask_band=(0.5, 2.0), mask=torch.tensor([1, 1, 1, 0]))
    assert masked.tolist() == [1.0] * 4


def test_masked_sequences_leave_the_loss_and_its_gradient():
    lp = LP_OLD.clone().requires_grad_()  # ratio 1: per-token loss -A
    advantages = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=T)
    cfg = LossConfig(is_mask_band=(0.5, 2.0))
    loss, metrics = compute_loss(
        cfg, LP_OLD, lp, advantages, ONES, lp_rollout=LP_ROLLOUT, sequence_ids=SEQ, num_sequences=2
    )
    assert loss.item() == pytest.approx(-(1.0 + 2.0) / 4)  # sequence 1 dropped, still in the token count
    loss.backward()
    assert lp.grad[2:].tolist() == [0.0, 0.0] and all(g != 0 for g in lp.grad[:2].tolist())
    assert metrics["tis/masked"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lp_rollout"):
        compute_loss(cfg, LP_OLD, lp, advantages, ONES)


def test_sequence_index_numbers_packed_and_padded_sequences():
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert sequence_index(packed).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    padded = torch.arange(4).repeat(3, 1)
    assert sequence_index(padded).tolist() == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--algorithm.tis-level", "sequence"], "algorithm.tis_level='sequence' needs algorithm.tis_cap"),
        (
            ["--algorithm.is-mask-band", "1.5", "2.0"],
            "command line: algorithm.is_mask_band[0]: expected a value <= 1.0, got 1.5",
        ),
        (
            ["--algorithm.is-mask-band", "0.5", "0.9"],
            "command line: algorithm.is_mask_band[1]: expected a value >= 1.0, got 0.9",
        ),
        (
            ["--algorithm.mismatch-threshold", "0"],
            "command line: algorithm.mismatch_threshold: expected a value > 0.0, got 0.0",
        ),
    ],
)
def test_bad_options_are_named(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_config(argv)
    assert message in str(e.value)


def test_training_run_logs_mismatch_every_step_with_sequence_level_correction(tmp_path):
    cfg = parse_config(
        [
            "--model.tiny.hidden-size", "32", "--model.tiny.intermediate-size", "64",
            "--train.warmup-sft-steps", "3", "--data.prompts-per-step", "4", "--rollout.n", "4",
            "--rollout.max-new-tokens", "5", "--optim.mini-batches", "2", "--eval.every", "0",
            "--train.steps", "2", "--algorithm.tis-cap", "2.0", "--algorithm.tis-level", "sequence",
            "--algorithm.is-mask-band", "0.5", "2.0", "--run.output-dir", str(tmp_path), "--run.name", "m",
        ]
    )  # fmt: skip
    train(cfg)
    lines = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        assert 0.0 <= m["mismatch/abs_diff_mean"] <= m["mismatch/abs_diff_max"]
        assert m["mismatch/kl_k3"] >= 0.0 and 0.0 <= m["mismatch/frac_above_threshold"] <= 1.0
        assert m["mismatch/seq_log_ratio_min"] <= m["mismatch/seq_log_ratio_max"]
        assert m["mismatch/seq_abs_diff_max"] <= m["mismatch/abs_diff_max"] + 1e-9
        assert 0.0 <= m["tis/masked"] <= 1.0 and m["tis/weight"] > 0
        assert "|Δlp|" in step_line(m["step"], m)
    assert (cfg.run_dir / "plots" / "rollout_mismatch.png").is_file()
