"""Non-finite updates: skipped and counted, and after K in a row the run stops, naming the last good
checkpoint; metrics.jsonl stays strict JSON and keeps the gradient norm of skipped updates."""

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


def test_metrics_file_writes_nonfinite_values_as_null(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(0, {"a": float("nan"), "b": float("inf"), "c": 1.5})
    assert strict_json_lines(tmp_path / "metrics.jsonl") == [{"step": 0, "a": None, "b": None, "c": 1.5}]
