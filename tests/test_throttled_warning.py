"""A per-step warning is said at most once per interval, with how often it came up meanwhile."""

import logging

from test_train import fast_config, read_metrics

from occ_fast.monitoring.throttle import ThrottledWarning
from occ_fast.train import train


def test_a_warning_is_said_once_per_interval_with_the_count_of_the_ones_between(caplog):
    now = {"t": 100.0}
    warn = ThrottledWarning(logging.getLogger("throttle-test"), every_s=60.0, clock=lambda: now["t"])
    with caplog.at_level(logging.WARNING, logger="throttle-test"):
        for t in (100.0, 110.0, 159.0, 160.0, 170.0, 230.0):
            now["t"] = t
            warn("step at %.0f: short", t)
    assert [r.getMessage() for r in caplog.records] == [
        "step at 100: short (said at most once per 60 s)",
        "step at 160: short (3 times since the last such warning; said at most once per 60 s)",
        "step at 230: short (2 times since the last such warning; said at most once per 60 s)",
    ]


def test_dynamic_sampling_falling_short_every_step_is_warned_about_once(tmp_path, caplog):
    """One refill round: most steps keep zero-variance groups to fill their quota; the run logs
    that once, not once per step (the steps come seconds apart)."""
    cfg = fast_config(
        tmp_path, "--algorithm.dynamic-sampling", "--algorithm.dynamic-sampling-max-rounds", "1",
        "--train.steps", "4",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="occ_fast"):
        train(cfg)
    short = [m for m in read_metrics(cfg.run_dir) if m["reward/zero_std_groups"] > 0]
    assert len(short) >= 2, "the test needs steps that fell short"
    warnings = [r.getMessage() for r in caplog.records if "dynamic sampling kept" in r.getMessage()]
    assert len(warnings) == 1, warnings
