"""Rollout log-probs that are NaN or infinite stop the run at that step, in one line naming the step
and the count: trained on, they made the importance weights and the mismatch metrics null while the
run went on (seen with vLLM's CPU build, whose speculative sampler returns NaN for drafted tokens).
With ``rollout.on_nonfinite_logprobs=drop`` the groups holding them are dropped, counted and refilled."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import nan_rollouts
import torch
import warm_python
from faults_helpers import fast_args, trainer_env

from occ_fast.train import main


def test_nonfinite_rollout_logprobs_stop_the_run_at_that_step(tmp_path, monkeypatch, capsys):
    nan_rollouts.install(monkeypatch, every_call=True)
    assert main(fast_args(tmp_path, "r", "--train.steps", "4", "--run.save-every", "1")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "rollout log-probs" in line]
    assert len(lines) == 1 and "step 1" in lines[0] and "2 of " in lines[0], err
    assert "last good checkpoint is " + str(tmp_path / "r" / "checkpoints" / "step_000000000") in err, err
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0]  # nothing trained on the bad rollouts
    assert metrics[0]["rollout/nonfinite_logprobs"] == 0


def test_finite_rollout_logprobs_count_zero(tmp_path):
    assert main(fast_args(tmp_path, "r", "--train.steps", "1")) == 0
    (line,) = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["rollout/nonfinite_logprobs"] == 0
    assert torch.isfinite(torch.tensor(json.loads(line)["mismatch/abs_diff_max"]))


def test_drop_mode_drops_the_groups_with_nonfinite_logprobs_and_refills_them(tmp_path, monkeypatch):
    """``rollout.on_nonfinite_logprobs=drop``: the group holding the bad log-probs is dropped and
    counted, a second round rolls out a new prompt in its place, and the step trains on finite
    log-probs only; the run goes on."""
    nan_rollouts.install(monkeypatch)
    args = fast_args(tmp_path, "r", "--train.steps", "3", "--rollout.on-nonfinite-logprobs", "drop")
    assert main(args) == 0
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert [m["rollout/dropped_groups"] for m in metrics] == [0, 1, 0]
    assert [m["rollout/nonfinite_logprobs"] for m in metrics] == [0, 2, 0]
    assert [m["rollout/rounds"] for m in metrics] == [1, 2, 1]
    assert all(math.isfinite(m["mismatch/abs_diff_max"]) for m in metrics)


def test_drop_mode_stops_a_step_still_short_after_its_rounds(tmp_path, monkeypatch, capsys):
    """Every round of step 1 brings a bad group: after ``algorithm.dynamic_sampling_max_rounds``
    rounds the step is still short, and the run stops there in one line, nothing trained on."""
    nan_rollouts.install(monkeypatch, every_call=True)
    args = fast_args(
        tmp_path, "r", "--train.steps", "3", "--rollout.on-nonfinite-logprobs", "drop",
        "--algorithm.dynamic-sampling-max-rounds", "3",
    )  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "rollout log-probs" in line]
    assert len(lines) == 1 and "step 1" in lines[0] and "3 rounds" in lines[0], err
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0]


def test_drop_mode_on_one_rank_of_two_refills_its_group_and_both_ranks_go_on(tmp_path):
    """Under torchrun (2 gloo ranks), rank 1's step-1 rollouts hold the bad log-probs: rank 1 drops
    that group and rolls out a new prompt while rank 0, whose share is complete, joins the second
    round with nothing to roll out; the counts are summed over the ranks, and both ranks finish."""
    args = fast_args(tmp_path, "r", "--train.steps", "3", "--rollout.on-nonfinite-logprobs", "drop")
    proc = subprocess.run(
        warm_python.torchrun(2, str(Path(__file__).with_name("nan_rollouts.py")), *args),
        env=trainer_env(NAN_ROLLOUTS_RANK="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollout/dropped_groups"] for m in metrics] == [0, 1, 0]
    assert [m["rollout/nonfinite_logprobs"] for m in metrics] == [0, 2, 0]
    assert [m["rollout/rounds"] for m in metrics] == [1, 2, 1]
