"""Reward health: failures are counted per step and warned about sparingly, a reward that keeps
failing stops the run, the time limit holds in-process too, and answers the reward cannot read are
refused at load."""

from __future__ import annotations

import logging
import time

import pytest
from faults_helpers import arithmetic_rows, fast_args, file_data_args, write_jsonl
from rich.console import Console

from occ_fast.config import parse_config
from occ_fast.data import DatasetError
from occ_fast.rewards import RewardScorer
from occ_fast.train import main
from occ_fast.training.setup import setup


def test_in_process_scoring_holds_the_time_limit():
    with RewardScorer("fault_rewards:slow_on_odd_answers", num_workers=0, timeout_s=0.3) as scorer:
        started = time.monotonic()
        result = scorer.score(["4", "5", "6", "7"], ["4", "5", "6", "7"])
    assert time.monotonic() - started < 2.0
    assert result.rewards == [1.0, 0.0, 1.0, 0.0]
    assert result.num_timeouts == 2 and result.num_errors == 0
    assert result.errors == ["item 1: timed out after 0.3 s", "item 3: timed out after 0.3 s"]


def test_a_reward_that_keeps_failing_stops_the_run_with_few_warnings(tmp_path, capsys, caplog):
    args = fast_args(
        tmp_path, "r", "--train.steps", "6", "--reward.fn", "fault_rewards:always_fails",
        "--reward.max-error-rate", "0.5", "--reward.error-patience", "2", "--run.log-every", "1",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="occ_fast"):
        assert main(args) == 1
    err = " ".join(capsys.readouterr().err.split())  # unwrapped
    assert "reward.fn='fault_rewards:always_fails' failed on 100% of samples for 2 steps in a row" in err, err
    assert "RuntimeError: this reward fails on every sample" in err
    assert "reward errors 100%" in err  # in the step line
    warnings = [r.getMessage() for r in caplog.records if "reward" in r.getMessage()]
    assert len(warnings) == 1 and "16 of 16 samples" in warnings[0], warnings
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"reward/error_rate": 1.0' in lines[-1]


def test_loader_refuses_answers_the_arithmetic_reward_cannot_read(tmp_path):
    rows = [*arithmetic_rows(2), {"prompt": "3 + 4 =", "answer": 7.0}]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    cfg = parse_config(fast_args(tmp_path, "r", *file_data_args(data)))
    with pytest.raises(
        DatasetError, match=r"data.jsonl, row 3: reward.fn='arithmetic' cannot read answer '7.0'"
    ):
        setup(cfg, Console(quiet=True))
    assert not (tmp_path / "r").exists()  # refused before the run directory is made
