"""Rollout log-probs that are NaN or infinite stop the run at that step, in one line naming the step
and the count: trained on, they made the importance weights and the mismatch metrics null while the
run went on (seen with vLLM's CPU build, whose speculative sampler returns NaN for drafted tokens)."""

from __future__ import annotations

import json

import torch
from faults_helpers import fast_args

from occ_fast.rollout.transformers_engine import TransformersEngine
from occ_fast.train import main


def test_nonfinite_rollout_logprobs_stop_the_run_at_that_step(tmp_path, monkeypatch, capsys):
    real_generate = TransformersEngine.generate
    calls = {"n": 0}

    def nan_from_the_second_call(self, *args, **kwargs):
        results = real_generate(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 2:  # the engine's second rollout batch: step 1
            results[0].logprobs[0] = float("nan")
            results[2].logprobs[-1] = float("inf")
        return results

    monkeypatch.setattr(TransformersEngine, "generate", nan_from_the_second_call)
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
