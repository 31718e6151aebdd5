"""Non-finite updates: skipped and counted, and after K in a row (across RL steps; an applied update
ends a streak; K = 0 never stops) the run stops, naming the last good checkpoint; metrics.jsonl
stays strict JSON and keeps the gradient norm of skipped updates."""

from __future__ import annotations

import json
import math

from faults_helpers import fast_args

import occ_fast.training.update as update_module
from occ_fast.monitoring.metrics import MetricsLogger
from occ_fast.train import main


def strict_json_lines(path) -> list[dict]:
    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def test_consecutive_nonfinite_updates_stop_the_run_naming_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    real_compute_loss = update_module.compute_loss
    calls = {"n": 0}

    def poisoned_from_step_2(*args, **kwargs):  # 2 mini-batches of 1 micro-batch per step
        loss, metrics = real_compute_loss(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 4 else loss), metrics

    monkeypatch.setattr(update_module, "compute_loss", poisoned_from_step_2)
    args = fast_args(
        tmp_path, "r", "--train.steps", "10", "--run.save-every", "1", "--optim.micro-batch-size", "8",
        "--optim.max-nonfinite-updates", "4",
    )  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "4 optimizer updates in a row had a non-finite gradient norm" in err, err
    assert "the last good checkpoint is " + str(tmp_path / "r" / "checkpoints" / "step_000000001") in err
    assert "Traceback" not in err
    lines = strict_json_lines(tmp_path / "r" / "metrics.jsonl")
    assert [m["step"] for m in lines] == [0, 1, 2, 3]  # stopped at the fourth skipped update
    assert [m["optim/nan_skipped"] for m in lines] == [0, 0, 2, 2]
    assert all("optim/grad_norm" in m for m in lines)
    assert lines[2]["optim/grad_norm"] is None  # NaN, written as null
    assert math.isfinite(lines[1]["optim/grad_norm"])


def poison_updates(monkeypatch, updates: set[int]) -> None:
    """Optimizer updates ``updates`` (counted from 1; 2 mini-batches of 1 micro-batch per RL step)
    get a NaN loss, so their gradient norm is non-finite."""
    real_compute_loss = update_module.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, metrics = real_compute_loss(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] in updates else loss), metrics

    monkeypatch.setattr(update_module, "compute_loss", poisoned)


def test_only_updates_skipped_in_a_row_stop_the_run_across_steps(tmp_path, monkeypatch, capsys):
    """With max_nonfinite_updates 3 (checked after each RL step): updates 2 and 6 are skipped, each
    followed by an applied one (which ends the streak), so the run goes on; updates 8, 9 and 10 are
    skipped in a row, the last of RL step 3 and both of step 4, and the run stops after step 4,
    naming the checkpoint of step 1, the last step without a skipped update."""
    poison_updates(monkeypatch, {2, 6, 8, 9, 10})
    args = fast_args(
        tmp_path, "r", "--train.steps", "7", "--run.save-every", "1", "--optim.micro-batch-size", "8",
        "--optim.max-nonfinite-updates", "3", "--reward.fn", "signal_reward:digit_parity",
    )  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "stopping: 3 optimizer updates in a row had a non-finite gradient norm (since step 3;" in err, err
    assert "the last good checkpoint is " + str(tmp_path / "r" / "checkpoints" / "step_000000001") in err, err
    lines = strict_json_lines(tmp_path / "r" / "metrics.jsonl")
    assert [m["optim/nan_skipped"] for m in lines] == [1, 0, 1, 1, 2]


def test_max_nonfinite_updates_0_never_stops(tmp_path, monkeypatch):
    """0 turns the stop off: every update from the second step on is skipped, and the run still ends."""
    poison_updates(monkeypatch, set(range(3, 100)))
    args = fast_args(
        tmp_path, "r", "--train.steps", "3", "--optim.micro-batch-size", "8",
        "--optim.max-nonfinite-updates", "0",
    )  # fmt: skip
    assert main(args) == 0
    lines = strict_json_lines(tmp_path / "r" / "metrics.jsonl")
    assert [m["optim/nan_skipped"] for m in lines] == [0, 2, 2]


def test_metrics_file_writes_nonfinite_values_as_null(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(0, {"a": float("nan"), "b": float("inf"), "c": 1.5})
    assert strict_json_lines(tmp_path / "metrics.jsonl") == [{"step": 0, "a": None, "b": None, "c": 1.5}]
