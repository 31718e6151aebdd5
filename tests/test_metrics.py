"""Metrics sinks: JSONL, TensorBoard events, PNG plots, and resume truncation; the run's plots (each
quantity on an axis where it varies visibly) and the final summary's reward figures."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from occ_fast.config import parse_config
from occ_fast.monitoring.metrics import MetricsLogger, Panel, draw_figure, plot_metrics, read_metrics
from occ_fast.monitoring.report import PLOTS, summarize

PANELS = {
    "reward": [Panel(["reward/mean", "accuracy"], "reward")],
    "occ lam": [Panel(["occ/lam"], "lam")],
    "eval": [Panel(["eval/accuracy"], "accuracy")],
}


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


def drawn(axes) -> list[str]:
    """Labels of the lines on ``axes`` that carry data."""
    return [line.get_label() for line in axes.get_lines() if len(line.get_xdata())]


def test_lambda_plot_shades_the_micro_batch_spread_and_leaves_out_the_structural_zero():
    records = [
        {"step": s, "mtp/lam": 0.01 * s, "mtp/lam_min": 0.01 * s - (s % 2), "mtp/lam_max": 0.01 * s + 0.1,
         "mtp/lam_first_minibatch": 0.0}
        for s in range(6)
    ]  # fmt: skip
    (axes,) = draw_figure(records, "occ_lambda", PLOTS["occ_lambda"]).axes
    assert drawn(axes) == ["mtp/lam"]  # min and max are not lines repeating the mean, the 0 not drawn
    assert len(axes.collections) == 1  # the min..max band
    assert "mtp/lam_first_minibatch: 0 by construction" in axes.get_title(loc="left")

    one_micro_batch = [{**r, "mtp/lam_min": r["mtp/lam"], "mtp/lam_max": r["mtp/lam"]} for r in records]
    (axes,) = draw_figure(one_micro_batch, "occ_lambda", PLOTS["occ_lambda"]).axes
    assert drawn(axes) == ["mtp/lam"] and not axes.collections
    assert "mtp/lam_min = mtp/lam_max at every step" in axes.get_title(loc="left")


def test_proxy_terms_get_an_axis_each_where_they_vary():
    records = [{"step": s, "mtp/c_hat": 0.005 * (-1) ** s, "mtp/v2_hat": 0.1 * 3**s} for s in range(4)]
    c_axes, v2_axes = draw_figure(records, "occ_proxy", PLOTS["occ_proxy"]).axes
    assert (drawn(c_axes), drawn(v2_axes)) == (["mtp/c_hat"], ["mtp/v2_hat"])
    low, high = c_axes.get_ylim()
    assert 0.01 / (high - low) > 0.5  # c_hat's swing fills most of its axis
    assert (c_axes.get_yscale(), v2_axes.get_yscale()) == ("linear", "log")  # v2_hat spans decades


def test_rollout_mismatch_has_one_quantity_per_axis_and_logs_the_positive_wide_ones():
    records = [
        {"step": s, "mismatch/abs_diff_mean": 10.0**-s, "mismatch/kl_k1": 1e-8 * (-1) ** s,
         "mismatch/kl_k3": 1e-9 * (1 + s), "mismatch/frac_above_threshold": 0.0}
        for s in range(4)
    ]  # fmt: skip
    figure = draw_figure(records, "rollout_mismatch", PLOTS["rollout_mismatch"])
    assert [drawn(axes) for axes in figure.axes] == [
        ["mismatch/abs_diff_mean"], ["mismatch/kl_k1"], ["mismatch/kl_k3"], ["mismatch/frac_above_threshold"]
    ]  # fmt: skip
    assert [axes.get_yscale() for axes in figure.axes] == ["log", "linear", "linear", "linear"]
    assert all("nats" in axes.get_ylabel() for axes in figure.axes[:3])


def test_summary_says_which_steps_each_reward_figure_covers(tmp_path):
    cfg = parse_config(["--train.steps", "10", "--run.output-dir", str(tmp_path)])
    history = [{"reward/mean": s / 10, "optim/nan_skipped": 0} for s in range(10)]
    short = summarize(cfg, history[:3], is_main=True)
    assert summarize(cfg, history, is_main=True).reward_change() == (
        "0.000 (first step) -> 0.850 (mean of the last 2 steps)"
    )
    assert short.reward_change() == "0.000 (first step) -> 0.200 (last step)"
