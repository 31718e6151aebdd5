"""Metrics sinks: JSONL, TensorBoard events, PNG plots, and resume truncation."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from occ_fast.monitoring.metrics import MetricsLogger, plot_metrics, read_metrics

PANELS = {"reward": ["reward/mean", "accuracy"], "occ lam": ["occ/lam"], "eval": ["eval/accuracy"]}


def log_steps(logger: MetricsLogger, steps: range) -> None:
    for step in steps:
        logger.log(
            step,
            {
                "reward/mean": torch.tensor(step / 10),
                "accuracy": np.float32(step / 20),
                "occ/lam": 0.1 * step,
                "tokens": step * 100,
            },
        )


def test_jsonl_tensorboard_and_plots(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        log_steps(logger, range(1, 6))
        records = read_metrics(logger.path)  # readable while the run is live: lines are flushed
        assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
        expected = {"step": 2, "reward/mean": 0.2, "accuracy": 0.1, "occ/lam": 0.2, "tokens": 200}
        assert records[1] == pytest.approx(expected)
        written = logger.plot(PANELS)
    assert [p.name for p in written] == ["reward.png", "occ_lam.png"]  # no eval logged yet: no eval.png
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_drops_steps_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        log_steps(logger, range(1, 8))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 8, "reward/me')  # torn line from a crash mid-write

    with pytest.raises(FileExistsError, match="metrics.jsonl already holds metrics"):
        MetricsLogger(tmp_path)
    with MetricsLogger(tmp_path, resume_step=4, tensorboard=True) as logger:
        assert [r["step"] for r in read_metrics(logger.path)] == [1, 2, 3, 4]
        with pytest.raises(ValueError, match="step 3 is before the last logged step 4"):
            logger.log(3, {"x": 1.0})
        log_steps(logger, range(5, 7))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert len(plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "pngs", PANELS)) == 2


def test_bad_values_and_files_are_named(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": float("nan")})  # a NaN loss is recorded, not hidden
        with pytest.raises(TypeError, match="metric 'name' is a str"):
            logger.log(1, {"name": "x"})
        with pytest.raises(ValueError, match="metric 'vec' has 3 elements"):
            logger.log(1, {"vec": torch.ones(3)})
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed metrics line"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_metrics(tmp_path / "missing.jsonl")
    assert math.isnan(read_metrics(tmp_path / "metrics.jsonl")[0]["loss"])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_requested_but_missing_says_what_to_install(tmp_path):
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsLogger(tmp_path, wandb=True)
