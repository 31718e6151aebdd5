"""Reward workers die with the trainer, whatever kills it: SIGKILL of a real trainer whose workers
are busy with a reward that hangs (and that ignore SIGTERM and SIGINT, as workers do) leaves no
worker behind."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from faults_helpers import Trainer, fast_args

WORKERS = 2


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie (a dead orphan waits for whoever adopted it to reap it)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="finds the workers through /proc")
def test_sigkill_of_the_trainer_takes_its_busy_reward_workers_with_it(tmp_path):
    flag = tmp_path / "hanging"
    trainer = Trainer(
        fast_args(
            tmp_path, "r", "--train.steps", "2",
            "--reward.fn", "fault_rewards:hang_after_calls",
            "--reward.num-workers", str(WORKERS), "--reward.timeout-s", "600",
        ),
        fresh=True,  # its pid is the trainer's, whose children the workers are
        FAULT_HANG_AFTER="0", FAULT_HANG_FLAG=str(flag),
    )  # fmt: skip
    workers: list[int] = []
    try:
        trainer.wait_for(flag.exists, "a worker hanging in its reward")
        workers = children(trainer.proc.pid)
        assert len(workers) == WORKERS, trainer.output[-3000:]
        os.kill(trainer.proc.pid, signal.SIGKILL)  # the trainer alone, as the OOM killer does
        trainer.proc.wait()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)], "reward workers outlived the trainer"
    finally:
        trainer.kill()  # its process group: the workers too, whatever the outcome
