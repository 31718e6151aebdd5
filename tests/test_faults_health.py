"""Run health (issue 25, items 1 and 5): a checkpoint saved while the run is in doubt (non-finite
updates, an update far larger than the weights, a collapsed policy) never pushes out the last one
saved while it was healthy, and the stop message names that one; a collapse is reported once, or
stops the run with ``optim.stop_on_collapse``.

The runs: three healthy steps of the tiny model (a reward it earns at random: a digit in the
completion), then a resume at a learning rate that ruins it, saving every step with keep_last 1 or 2.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from faults_helpers import fast_args

import occ_fast.train as train_module
import occ_fast.training.update as update_module
from occ_fast.checkpointing.files import checkpoint_dir, last_healthy
from occ_fast.checkpointing.single_process import save_checkpoint
from occ_fast.config import Config
from occ_fast.monitoring.health import PolicyHealth, TrainingHalted
from occ_fast.train import main

SAVING = ["--reward.fn", "fault_rewards:has_digit", "--run.save-every", "1", "--run.keep-last", "2"]
HEALTHY_STEPS = 3  # steps 0..2: reward > 0 in every step, finite updates of normal size


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("healthy")
    assert main(fast_args(out, "r", *SAVING, "--train.steps", str(HEALTHY_STEPS))) == 0
    return out / "r"


def resume(healthy_run: Path, tmp_path: Path, *flags: str) -> list[str]:
    """A copy of the healthy run, and the flags that resume it (the resumed steps start at 3)."""
    shutil.copytree(healthy_run, tmp_path / "r")
    return fast_args(tmp_path, "r", *SAVING, "--train.steps", "10", "--run.resume", "auto", *flags)


def unwrapped(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def nan_losses_from_step(monkeypatch, first: int) -> None:
    """Every loss from RL step ``first`` on is NaN, so its updates are non-finite (and skipped)."""
    real_step, real_loss = train_module.rl_step, update_module.compute_loss
    poisoned = {"on": False}

    def step(run, i):
        poisoned["on"] = i >= first
        return real_step(run, i)

    def loss(*args, **kwargs):
        value, metrics = real_loss(*args, **kwargs)
        return (value * float("nan") if poisoned["on"] else value), metrics

    monkeypatch.setattr(train_module, "rl_step", step)
    monkeypatch.setattr(update_module, "compute_loss", loss)


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("keep_last", ["1", "2"])
def test_a_learning_rate_that_blows_up_never_prunes_the_last_healthy_checkpoint(
    healthy_run, tmp_path, capsys, keep_last
):
    """Resumed at lr 1e30, the first update ruins the weights and the next ones are non-finite:
    the checkpoints saved through that streak used to prune the healthy one ("no checkpoint
    predates them: start again")."""
    healthy = checkpoint_dir(tmp_path / "r", HEALTHY_STEPS - 1)
    args = resume(healthy_run, tmp_path, "--optim.lr", "1e30", "--run.keep-last", keep_last)
    assert main(args) == 1
    err = unwrapped(capsys)
    # Ruined weights stop the run at the first sign: non-finite updates, or the NaN log-probs of
    # their rollouts (tests/test_faults_rollout_logprobs.py); either way the healthy one is named.
    assert (
        "optimizer updates in a row had a non-finite gradient norm" in err
        or "rollout log-probs are NaN or infinite" in err
    ), err
    assert f"the last good checkpoint is {healthy} " in err, err
    assert (healthy / "meta.json").is_file()
    newest = sorted((tmp_path / "r" / "checkpoints").glob("step_*"))[-1]
    health = json.loads((newest / "meta.json").read_text())["health"]
    assert health["healthy"] is False and health["suspect_from"] == HEALTHY_STEPS, health


@pytest.mark.parametrize(  # found by the update's size, or by the collapse alone
    "ratio_flags", [[], ["--optim.max-update-ratio", "inf"]], ids=["default", "collapse-alone"]
)
def test_a_collapse_before_non_finite_updates_leaves_the_healthy_checkpoint_named(
    healthy_run, tmp_path, capsys, caplog, monkeypatch, ratio_flags
):
    """Resumed at lr 1, the first update (step 3, about 6 times the weights' norm) leaves finite but
    ruined weights: reward and gradient norm 0 from step 4 on; non-finite updates come later (step 9).
    The stop used to name a checkpoint of the collapsed policy (step 8) as the last good one, every
    older one pruned."""
    healthy = checkpoint_dir(tmp_path / "r", HEALTHY_STEPS - 1)
    nan_losses_from_step(monkeypatch, 9)
    args = resume(
        healthy_run, tmp_path, "--optim.lr", "1", "--optim.max-nonfinite-updates", "2", *ratio_flags
    )
    with caplog.at_level(logging.WARNING, logger="occ_fast"):
        assert main(args) == 1
    err = unwrapped(capsys)
    lines = metrics_lines(tmp_path / "r")
    assert [(m["reward/mean"], m["optim/grad_norm"]) for m in lines[4:9]] == [(0.0, 0.0)] * 5
    assert "2 optimizer updates in a row had a non-finite gradient norm (since step 9" in err, err
    assert f"the last good checkpoint is {healthy} " in err, err
    collapsed = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(collapsed) == 1, collapsed
    assert collapsed[0].startswith("step 8: the policy has collapsed") and str(healthy) in collapsed[0]


def test_a_collapsed_policy_is_reported_once_and_the_run_goes_on(healthy_run, tmp_path, caplog):
    """Reward and gradient norm 0 for every step after a ruinous learning rate used to end with
    exit status 0 and no word."""
    args = resume(healthy_run, tmp_path, "--optim.lr", "1")
    with caplog.at_level(logging.WARNING, logger="occ_fast"):
        assert main(args) == 0
    collapsed = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(collapsed) == 1, collapsed
    assert collapsed[0].startswith(
        "step 8: the policy has collapsed: reward and gradient norm 0 for 5 steps in a row (since step 4"
    ), collapsed
    assert f"the last good checkpoint is {checkpoint_dir(tmp_path / 'r', HEALTHY_STEPS - 1)} " in collapsed[0]
    assert "--optim.stop-on-collapse" in collapsed[0]
    assert len(metrics_lines(tmp_path / "r")) == 10


def test_stop_on_collapse_stops_the_run_in_one_line(healthy_run, tmp_path, capsys):
    args = resume(healthy_run, tmp_path, "--optim.lr", "1", "--optim.stop-on-collapse")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = " ".join(err.split())
    assert "stopping: the policy has collapsed: reward and gradient norm 0 for 5 steps in a row" in err, err
    assert f"the last good checkpoint is {checkpoint_dir(tmp_path / 'r', HEALTHY_STEPS - 1)} " in err, err
    assert [m["step"] for m in metrics_lines(tmp_path / "r")][-1] == 8


# The health rule on hand-made histories.


def step_metrics(reward=0.5, grad=1.0, skipped=0, ratio=1e-3) -> dict[str, float]:
    return {
        "reward/mean": reward,
        "optim/grad_norm": grad,
        "optim/nan_skipped": skipped,
        "optim/update_ratio": ratio,
    }


ZERO = step_metrics(reward=0.0, grad=0.0)


def judge(history: list[dict], run_dir: Path, collapse_steps=3, stop=False) -> PolicyHealth:
    health = PolicyHealth(collapse_steps=collapse_steps, max_update_ratio=1.0, stop_on_collapse=stop)
    for step, metrics in enumerate(history):
        health.end_step(step, metrics, run_dir)
    return health


def collapse_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]


@pytest.mark.parametrize("zeros", [2, 3, 10])
def test_a_collapse_is_collapse_steps_zero_steps_in_a_row_and_warns_once(tmp_path, caplog, zeros):
    judge([step_metrics()] * 2 + [ZERO] * zeros + [step_metrics()], tmp_path)
    warnings = collapse_warnings(caplog)
    assert len(warnings) == (zeros >= 3), warnings
    if warnings:  # steps 2..4 are the first three zero steps
        assert warnings[0].startswith("step 4: the policy has collapsed"), warnings
        assert "no checkpoint was saved while the run was healthy" in warnings[0]


def test_a_step_with_reward_or_gradient_resets_the_count(tmp_path, caplog):
    some_reward, some_gradient = step_metrics(grad=0.0), step_metrics(reward=0.0)
    history = [ZERO, ZERO, some_reward, ZERO, ZERO, some_gradient, ZERO, ZERO]
    judge(history, tmp_path)
    assert collapse_warnings(caplog) == []
    judge([*history, ZERO], tmp_path)
    assert [w.split(":")[0] for w in collapse_warnings(caplog)] == ["step 8"]


def test_collapse_steps_0_never_judges_a_collapse(tmp_path, caplog):
    judge([step_metrics()] + [ZERO] * 10, tmp_path, collapse_steps=0, stop=True)
    assert collapse_warnings(caplog) == []


def test_zero_steps_before_any_healthy_step_are_no_collapse_nor_doubt(tmp_path, caplog):
    """A run that has not had a learning signal yet (a task too hard for it) has lost nothing."""
    health = judge([ZERO] * 6, tmp_path)
    assert collapse_warnings(caplog) == [] and health.record()["healthy"] is True
    judge([ZERO] * 6 + [step_metrics()] + [ZERO] * 3, tmp_path)
    assert [w.split(":")[0] for w in collapse_warnings(caplog)] == ["step 9"]


def test_stop_on_collapse_raises_one_line(tmp_path):
    with pytest.raises(TrainingHalted) as stop:
        judge([step_metrics(), ZERO, ZERO, ZERO, step_metrics()], tmp_path, stop=True)
    assert str(stop.value).startswith("stopping: the policy has collapsed: reward and gradient norm 0 for 3")
    assert "\n" not in str(stop.value)


@pytest.mark.parametrize(
    ("trouble", "suspect_from"),
    [
        (step_metrics(skipped=1, grad=float("nan")), 2),  # the non-finite update's own step
        (step_metrics(ratio=5.0), 2),  # an update five times the weights: its own step
        (step_metrics(ratio=float("nan")), 2),
        (ZERO, 1),  # the weights that drew nothing but reward 0: the step before
    ],
)
def test_which_checkpoint_each_trouble_puts_in_doubt(tmp_path, trouble, suspect_from):
    health = judge([step_metrics(), step_metrics(), trouble], tmp_path)
    assert health.suspect_from == suspect_from
    assert health.record()["healthy"] is False and health.record()["suspect_from"] == suspect_from
    health.end_step(3, step_metrics(), tmp_path)  # a healthy step: the doubt is lifted
    assert health.suspect_from is None and health.record()["healthy"] is True


def test_the_earliest_doubt_holds_until_a_healthy_step(tmp_path):
    health = judge(
        [step_metrics(), step_metrics(ratio=3.0), ZERO, step_metrics(skipped=2, grad=float("nan"))], tmp_path
    )
    assert health.suspect_from == 1  # the oversized update of step 1 (its zeros put step 1 in doubt too)
    health = judge([step_metrics(), ZERO, ZERO, step_metrics(skipped=1, grad=float("nan"))], tmp_path)
    assert health.suspect_from == 0


def test_a_resumed_run_goes_on_judging_from_its_checkpoints_record(tmp_path):
    optim = Config().optim
    health = PolicyHealth.for_run(optim, None)
    for step, metrics in enumerate([step_metrics(), ZERO, ZERO]):
        health.end_step(step, metrics, tmp_path)
    path = save_checkpoint(tmp_path, 2, torch.nn.Linear(2, 2), health=health.record())
    resumed = PolicyHealth.for_run(optim, path)
    assert resumed == health and (resumed.zero_steps, resumed.suspect_from) == (2, 0)
    assert PolicyHealth.for_run(optim, save_checkpoint(tmp_path, 3, torch.nn.Linear(2, 2))) == PolicyHealth(
        optim.collapse_steps, optim.max_update_ratio, optim.stop_on_collapse
    )  # a checkpoint saved before health was recorded: judged afresh


# Pruning: the checkpoints' recorded health against keep_last.

HEALTHY = {"healthy": True}


def doubt(since: int) -> dict:
    return {"healthy": False, "suspect_from": since, "reason": "test"}


def saved(run_dir: Path) -> list[int]:
    return [int(p.name.removeprefix("step_")) for p in sorted((run_dir / "checkpoints").glob("step_*"))]


def test_keep_last_1_never_prunes_the_last_healthy_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 0, model, keep_last=1, health=HEALTHY)
    save_checkpoint(tmp_path, 1, model, keep_last=1, health=HEALTHY)
    # The newest checkpoint's weights have drawn no rollout yet: the one before stays.
    assert saved(tmp_path) == [0, 1]
    for step in (2, 3, 4):
        save_checkpoint(tmp_path, step, model, keep_last=1, health=doubt(2))
    assert saved(tmp_path) == [1, 4]
    save_checkpoint(tmp_path, 5, model, keep_last=1, health=HEALTHY)  # recovered, not yet sampled
    assert saved(tmp_path) == [1, 5]
    save_checkpoint(tmp_path, 6, model, keep_last=1, health=HEALTHY)
    assert saved(tmp_path) == [5, 6]


def test_a_collapse_puts_the_checkpoint_saved_before_it_in_doubt(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step, health in enumerate([HEALTHY, HEALTHY, doubt(1), doubt(1), doubt(1)]):
        save_checkpoint(tmp_path, step, model, keep_last=2, health=health)
    assert saved(tmp_path) == [0, 3, 4]
    checkpoints = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert last_healthy(checkpoints, before=5) == checkpoint_dir(tmp_path, 0)


def test_checkpoints_without_a_health_record_count_as_healthy(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (0, 1):
        save_checkpoint(tmp_path, step, model, keep_last=None)  # saved before health was recorded
    save_checkpoint(tmp_path, 2, model, keep_last=1, health=doubt(2))
    assert saved(tmp_path) == [1, 2]
    checkpoints = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert last_healthy(checkpoints, before=1) is None
