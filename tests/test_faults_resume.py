"""Resuming with a changed configuration: incompatible changes refused (listed), safe ones applied,
recorded in config.yaml with their step; a new run name gets its config.yaml and the whole history."""

from __future__ import annotations

import json

import pytest
from faults_helpers import fast_args

from occ_fast.checkpointing.resume import config_changes
from occ_fast.config import Config, ConfigError, parse_config
from occ_fast.train import train


def test_resume_into_a_new_name_applies_safe_changes_and_records_them(tmp_path):
    common = [
        "--run.save-every", "1", "--optim.warmup-steps", "1",
        "--reward.fn", "fault_rewards:always_fails", "--reward.max-error-rate", "1",
    ]  # fmt: skip
    train(parse_config(fast_args(tmp_path, "first", *common, "--train.steps", "2")))
    checkpoint = tmp_path / "first" / "checkpoints" / "step_000000001"
    summary = train(
        parse_config(
            fast_args(
                tmp_path,
                "second",
                *common,
                "--train.steps",
                "3",
                "--optim.lr",
                "5e-4",
                "--run.resume",
                str(checkpoint),
            )  # fmt: skip
        )
    )
    lines = [json.loads(line) for line in (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2]  # the history came along
    assert [m["optim/lr"] for m in lines] == [1e-3, 1e-3, 5e-4]  # warm-up done: the new peak from step 2
    assert summary.reward_failures == 3 * 16  # the summary covers the whole run
    saved = tmp_path / "second" / "config.yaml"
    cfg = Config.from_yaml(saved)
    assert (cfg.optim.lr, cfg.train.steps) == (5e-4, 3)
    assert (
        f"# resumed from {checkpoint} at step 2: optim.lr 0.001 -> 0.0005, train.steps 2 -> 3"
        in saved.read_text()
    )


def test_incompatible_changes_are_refused_and_listed(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    parse_config(fast_args(tmp_path, "r")).to_yaml(run_dir / "config.yaml")
    requested = parse_config(
        fast_args(
            tmp_path,
            "r",
            "--model.tiny.hidden-size",
            "48",
            "--mtp.regime",
            "ce",
            "--data.digits",
            "3",
            "--optim.betas",
            "0.9",
            "0.95",
            "--train.steps",
            "300",
        )  # fmt: skip
    )
    with pytest.raises(ConfigError) as info:
        config_changes(run_dir / "config.yaml", requested)
    message = str(info.value)
    for change in (
        "model.tiny.hidden_size: 32 -> 48",
        "mtp.regime: occ -> ce (pass --run.allow-regime-change to switch regimes mid-run)",
        "data.digits: 2 -> 3",
        "optim.betas: [0.9, 0.999] -> [0.9, 0.95]",
    ):
        assert change in message, message
    assert "train.steps" not in message
    allowed = parse_config(fast_args(tmp_path, "r", "--mtp.regime", "ce", "--run.allow-regime-change"))
    assert config_changes(run_dir / "config.yaml", allowed) == ["mtp.regime occ -> ce"]


@pytest.mark.parametrize(("saved", "wanted"), [("occ", "none"), ("none", "ce")])
def test_allow_regime_change_still_refuses_regime_none(tmp_path, saved, wanted):
    """The flag switches between regimes that have MTP heads; into or out of 'none' the heads would
    have to appear or vanish, so it is refused with the flag too."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    parse_config(fast_args(tmp_path, "r", "--mtp.regime", saved)).to_yaml(run_dir / "config.yaml")
    requested = parse_config(fast_args(tmp_path, "r", "--mtp.regime", wanted, "--run.allow-regime-change"))
    with pytest.raises(ConfigError, match="the MTP heads exist only with a regime other than 'none'"):
        config_changes(run_dir / "config.yaml", requested)
