"""Shared pieces of the fault tests: the tiny fast flags, a file dataset, a trainer subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

FAST = [
    "--model.tiny.hidden-size", "32",
    "--model.tiny.intermediate-size", "64",
    "--train.warmup-sft-steps", "2",
    "--data.prompts-per-step", "4",
    "--rollout.n", "4",
    "--rollout.max-new-tokens", "5",
    "--optim.lr", "1e-3",
    "--optim.mini-batches", "2",
    "--optim.micro-batch-tokens", "64",
    "--eval.every", "0",
    "--run.plot-every", "0",
]  # fmt: skip
SUBPROCESS_TIMEOUT_S = 120


def fast_args(out: Path, name: str, *extra: str) -> list[str]:
    return [*FAST, "--run.output-dir", str(out), "--run.name", name, *extra]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def file_data_args(path: Path) -> list[str]:
    """File data for the tiny model: arithmetic prompts, answers under ``answer``, no warm-start."""
    return [
        "--data.source", "file",
        "--data.path", str(path),
        "--data.answer-field", "answer",
        "--train.warmup-sft-steps", "0",
    ]  # fmt: skip


def arithmetic_rows(count: int) -> list[dict]:
    return [{"prompt": f"{i} + {i + 1} =", "answer": str(2 * i + 1)} for i in range(10, 10 + count)]


def trainer_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def start_trainer(args: list[str], module: str = "occ_fast.train") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = SUBPROCESS_TIMEOUT_S) -> tuple[int, str]:
    """Wait for ``proc``; kill its whole process group and fail the test when it hangs."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"trainer hung for {timeout} s:\n{output[-6000:]}")
    return proc.returncode, output


def run_trainer(args: list[str]) -> tuple[int, str]:
    return finish(start_trainer(args))
