"""A whole run on the real vLLM engine (its CPU build), started as users start it.

``python -m occ_fast.train --rollout.engine vllm`` on a tiny model (head_dim 32, which the CPU
attention backend accepts), with the exact-gradient diagnostics on every step. Skipped without vLLM,
an error with ``OCC_FAST_REQUIRE_VLLM=1`` (the vLLM environment of .ci/run).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

if os.environ.get("OCC_FAST_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  (the vLLM environment must have it)
else:
    pytest.importorskip("vllm")

from occ_fast.monitoring.metrics import METRICS_FILE, read_metrics  # noqa: E402

STEPS = 2
ARGS = [
    "--rollout.engine", "vllm",
    "--model.tiny.num-heads", "2",
    "--train.steps", str(STEPS),
    "--train.warmup-sft-steps", "20",
    "--data.prompts-per-step", "4",
    "--rollout.n", "4",
    "--mtp.exact-every", "1",
    "--eval.every", "0",
    "--run.plot-every", "0",
]  # fmt: skip


def train(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``python -m occ_fast.train`` in a fresh process (from outside the repository, as users run it)."""
    argv = [*ARGS, "--run.output-dir", str(tmp_path), "--run.name", "run", *extra]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "occ_fast.train", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    metrics = tmp_path / "run" / METRICS_FILE
    return done, read_metrics(metrics) if metrics.is_file() else []


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    """The tiny preset's fp32 trainer; rollout.dtype left at 'auto'."""
    return train(tmp_path_factory.mktemp("fp32"))


def test_the_run_ends_cleanly_without_a_traceback(fp32_run):
    done, rows = fp32_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Invalid process group" not in done.stderr
    assert len(rows) == STEPS


def test_exact_diagnostics_run_beside_the_in_process_engine(fp32_run):
    """vLLM makes a process group of size 1 in the process: still a single-process run."""
    _, rows = fp32_run
    assert len(rows) == STEPS and all("exact/lam_star" in row for row in rows)


def test_the_engine_samples_in_the_trainers_precision(fp32_run):
    """fp32 trainer, rollout.dtype auto: the engine runs in fp32 (said at start), so the sync probe and
    the rollout/trainer mismatch stay at fp32 rounding (a bf16 engine: probe 0.01, mismatch 0.19)."""
    done, rows = fp32_run
    assert "dtype float32" in " ".join(done.stderr.split())
    assert len(rows) == STEPS
    for row in rows:
        assert row["rollout/sync_logprob_diff"] < 1e-4
        assert row["mismatch/abs_diff_max"] < 1e-3
