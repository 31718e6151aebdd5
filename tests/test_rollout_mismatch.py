"""Rollout-vs-trainer mismatch: the metrics and the sequence-level importance weights, by hand, and
both in a real training run (metrics.jsonl, plot, step line)."""

from __future__ import annotations

import json
import math
from decimal import Decimal, localcontext

import pytest
import torch

from occ_fast.algorithm import LossConfig, compute_loss
from occ_fast.algorithm.rollout_mismatch import MismatchLog, rollout_is_weights
from occ_fast.algorithm.sequences import sequence_index
from occ_fast.config import ConfigError, parse_config
from occ_fast.monitoring.report import step_line
from occ_fast.rollout import TransformersEngine
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


def test_the_band_is_closed_and_judges_the_ratio_before_the_cap():
    """A sequence whose ratio is exactly ``low`` or ``high`` stays (an on-policy sequence, ratio 1,
    stays in a band that starts at 1); a sequence-level cap does not pull a ratio back into the band."""
    assert weights(cap=None, mask_band=(math.exp(-0.5), math.e)).tolist() == [1.0] * 4  # e^-0.5, e^1
    on_policy = rollout_is_weights(
        LP_OLD, LP_OLD.clone(), ONES, cap=None, mask_band=(1.0, 1.0), sequence_ids=SEQ, num_sequences=2
    )
    assert on_policy.tolist() == [1.0] * 4
    capped = weights(cap=2.0, level="sequence", mask_band=(0.5, 2.0))  # e^1 = 2.72: capped to 2, still out
    assert capped.tolist() == pytest.approx([math.exp(-0.5)] * 2 + [0.0] * 2)


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


SHIFT = 0.25  # nats the engine under-reports a shifted token's log-prob by


def shift_engine_logprobs(monkeypatch) -> None:
    """Completion i of each group reports its first i tokens SHIFT nats less likely than sampled."""
    real = TransformersEngine.generate

    def generate(self, prompt_token_ids, params, *, progress=None):
        results = real(self, prompt_token_ids, params, progress=progress)
        for result in results:
            result.logprobs[: result.sample_index] -= SHIFT
        return results

    monkeypatch.setattr(TransformersEngine, "generate", generate)


def test_training_run_logs_mismatch_every_step_with_sequence_level_correction(tmp_path, monkeypatch):
    """A real run whose mismatch is known exactly: at temperature 1e-5 every sampled token has log-prob
    exactly 0 for the engine and the trainer alike, so the only gap is the engine's shift. A group's
    4 completions of 5 tokens shift 0, 1, 2, 3 tokens: lp_rollout - lp_old is -0.25 on 6 of its 20
    tokens, and the sequence ratios are 1, e^0.25, e^0.5, e^0.75. The band [1, e^0.5] keeps the first
    three (two of them on its edges) and drops the last; the sequence cap 1.5 truncates e^0.5."""
    shift_engine_logprobs(monkeypatch)
    cfg = parse_config(
        [
            "--model.tiny.hidden-size", "32", "--model.tiny.intermediate-size", "64",
            "--train.warmup-sft-steps", "0", "--data.prompts-per-step", "4", "--rollout.n", "4",
            "--rollout.max-new-tokens", "5", "--rollout.temperature", "1e-5", "--optim.mini-batches", "2",
            "--eval.every", "0", "--train.steps", "2", "--algorithm.tis-cap", "1.5",
            "--algorithm.tis-level", "sequence", "--algorithm.is-mask-band", "1.0", repr(math.exp(0.5)),
            "--run.output-dir", str(tmp_path), "--run.name", "m",
        ]
    )  # fmt: skip
    train(cfg)
    lines = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for m in lines:
        assert m["rollout/truncated"] == 16  # every completion has its 5 tokens
        assert m["mismatch/abs_diff_mean"] == pytest.approx(0.25 * 6 / 20)
        assert m["mismatch/abs_diff_max"] == pytest.approx(0.25)
        assert m["mismatch/kl_k1"] == pytest.approx(-0.25 * 6 / 20)  # KL(rollout || old): lp_rollout - lp_old
        assert m["mismatch/kl_k3"] == pytest.approx(6 / 20 * (math.exp(0.25) - 1 - 0.25))  # r - 1 - log r
        assert m["mismatch/frac_above_threshold"] == pytest.approx(6 / 20)
        assert m["mismatch/seq_log_ratio_min"] == 0.0
        assert m["mismatch/seq_log_ratio_max"] == pytest.approx(0.75)
        assert m["mismatch/seq_abs_diff_max"] == pytest.approx(0.75 / 5)
        assert m["tis/masked"] == pytest.approx(1 / 4)
        assert m["tis/weight"] == pytest.approx((1 + math.exp(0.25) + 1.5 + 0) / 4)
        assert "|Δlp|" in step_line(m["step"], m)
    assert (cfg.run_dir / "plots" / "rollout_mismatch.png").is_file()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mismatch_log_k3_matches_fp64_for_small_and_large_differences(dtype):
    """k3 = exp(-d) - 1 + d cancels in fp32 below |d| ~ 1e-3 (fp64's own exp(-d) - 1 + d is off by 2%
    at 1e-7): it must agree with a 50-digit evaluation from 1e-7 to 1."""
    torch.manual_seed(0)
    for scale in (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        lp_old = -torch.rand(64, dtype=torch.float64) * 3
        diff = scale * torch.randn(64, dtype=torch.float64)
        lp_rollout = lp_old + diff
        # The metric sees the log-probs in the dtype the trainer hands it; its reference is the same
        # rounded inputs in fp64, so only the metric's own arithmetic is under test.
        old, rollout = lp_old.to(dtype), lp_rollout.to(dtype)
        d = [Decimal(float(x)) for x in rollout.double() - old.double()]  # exact in fp64
        with localcontext() as ctx:
            ctx.prec = 50  # 50 digits: no cancellation
            want = float(sum((-x).exp() - 1 + x for x in d) / len(d))
        log = MismatchLog()
        log.add(old, rollout, torch.zeros(64, dtype=torch.long), 1)
        got = log.summary()["mismatch/kl_k3"]
        assert got >= 0
        assert got == pytest.approx(want, rel=1e-4, abs=1e-300), scale
