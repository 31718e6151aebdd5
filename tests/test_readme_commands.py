"""The commands the README gives, run as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import background
import pytest
import yaml
from default_run import default_run


def run(*args: str, cwd, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_train_help_lists_documented_fields(tmp_path):
    out = run("-m", "occ_fast.train", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for flag in ("--mtp.regime", "--mtp.aggregation", "--optim.lr", "--run.resume", "--preset"):
        assert flag in out.stdout


def test_config_dry_run_prints_the_resolved_preset(tmp_path):
    out = run("-m", "occ_fast.config", "--preset", "mimo-7b-dapo-occ", "--mtp.regime", "ce", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["mtp"]["regime"] == "ce"
    assert cfg["rollout"]["n"] == 16 and cfg["optim"]["lr"] == 1e-6


@pytest.mark.background(job=default_run, early=True)
def test_default_command_runs_on_cpu_and_reward_rises():
    """``python -m occ_fast.train`` with no arguments: the embedded tiny preset trains and writes its
    outputs. How long it takes is the default-run benchmark's job, not this test's."""
    out, run_dir = background.result(default_run)  # from an empty directory (tests/default_run.py)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = re.search(
        r"reward ([0-9.]+) \(first step\) -> ([0-9.]+) \(mean of the last 16 steps\) \| final lam ([-+0-9.]+)",
        out.stderr,
    )  # the last fifth of the 80 steps
    assert summary, out.stderr[-2000:]
    reward_start, reward_end = float(summary.group(1)), float(summary.group(2))
    assert reward_end > reward_start, (reward_start, reward_end)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 80 and all("mtp/lam" in m for m in lines)
    for name in ("reward", "occ_lambda", "mtp_accuracy"):
        assert (run_dir / "plots" / f"{name}.png").is_file()
    assert (run_dir / "model" / "model.safetensors").is_file()
