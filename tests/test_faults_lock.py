"""One run per directory: a second trainer on a live run's directory is refused in one line naming
the holder, before it writes anything there; once the holder is killed, the next start takes over
its stale lock with a note. Under torchrun the job holds the lock (rank 0), not each rank.

The first run is held in a step by a reward that hangs (``fault_rewards.hang_after_calls``), so the
second one certainly starts while the first trains. Each test's trainers run early, as a background
job (``tests/background.py``) that asserts what the test asserts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import background
import pytest
from faults_helpers import SUBPROCESS_TIMEOUT_S, Trainer, fast_args, run_trainer, trainer_env
from test_faults_distributed import rank_pid

from occ_fast.checkpointing.files import find_latest

HANGING = ["--reward.fn", "fault_rewards:hang_after_calls", "--reward.timeout-s", "600"]


def hang_env(tmp_path, after: int) -> dict[str, str]:
    return {"FAULT_HANG_AFTER": str(after), "FAULT_HANG_FLAG": str(tmp_path / "hanging")}


NO_HANG = {"FAULT_HANG_AFTER": "1000000", "FAULT_HANG_FLAG": os.devnull}


def assert_refused_naming(code: int, output: str, pid: int) -> None:
    """Exit 2 and one line that names the holder: pid, host, start time and command."""
    assert code == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if "in use by" in line]
    assert len(lines) == 1, output[-3000:]
    line = lines[0]
    assert f"pid {pid} " in line and socket.gethostname() in line and "started " in line, line
    assert "occ_fast.train" in line and "--run.name r" in line, line


def second_run_under_the_same_name(tmp_path) -> None:
    run_dir = tmp_path / "r"
    args = fast_args(tmp_path, "r", "--train.steps", "2", *HANGING)
    first = Trainer(args, fresh=True, **hang_env(tmp_path, 0))  # hangs in step 0; its pid holds the lock
    try:
        first.wait_for((tmp_path / "hanging").exists, "its first step")
        config = (run_dir / "config.yaml").read_text()

        code, output = run_trainer([*args, "--optim.lr", "5e-4"], **NO_HANG)
        assert_refused_naming(code, output, first.proc.pid)
        assert (run_dir / "config.yaml").read_text() == config, "the refused run wrote config.yaml"
    finally:
        first.kill()  # SIGKILL: the kernel drops its lock, its record stays behind

    code, output = run_trainer([*args, "--optim.lr", "5e-4"], **NO_HANG)
    assert code == 0, output[-3000:]
    notes = [line for line in output.splitlines() if "stale lock" in line]
    assert len(notes) == 1 and f"pid {first.proc.pid} " in notes[0], output[-3000:]
    assert "lr: 0.0005" in (run_dir / "config.yaml").read_text()


def resume_auto_against_a_live_run(tmp_path) -> None:
    run_dir = tmp_path / "r"
    args = fast_args(tmp_path, "r", "--train.steps", "3", "--run.save-every", "1", *HANGING)
    first = Trainer(args, fresh=True, **hang_env(tmp_path, 16))  # step 0 saved, then hangs in step 1
    try:
        first.wait_for((tmp_path / "hanging").exists, "step 1")
        metrics = (run_dir / "metrics.jsonl").read_text()
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())

        code, output = run_trainer([*args, "--run.resume", "auto"], **NO_HANG)
        assert_refused_naming(code, output, first.proc.pid)
        assert (run_dir / "metrics.jsonl").read_text() == metrics, "the refused run trained"
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == checkpoints
    finally:
        first.kill()

    code, output = run_trainer([*args, "--run.resume", "auto"], **NO_HANG)
    assert code == 0, output[-3000:]
    assert any("stale lock" in line and f"pid {first.proc.pid} " in line for line in output.splitlines())
    assert "continuing at step 1" in output
    assert find_latest(run_dir).name == "step_000000002"


def torchrun_job_holding_the_lock(tmp_path) -> None:
    if sys.platform != "linux":  # the test is skipped
        return
    args = fast_args(tmp_path, "r", "--train.steps", "2", "--train.device", "cpu", *HANGING)
    log = tmp_path / "job.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    agent = subprocess.Popen(  # fresh ranks: the lock names rank 0's pid, a child of torchrun
        [*cmd, "-m", "occ_fast.train", *args],
        env=trainer_env(**hang_env(tmp_path, 0)),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    background.track(agent)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not (tmp_path / "hanging").exists():
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        holder = rank_pid(agent, 0)
        code, output = run_trainer(args, **NO_HANG)
        assert_refused_naming(code, output, holder)
        assert agent.poll() is None, log.read_text()[-3000:]  # the job trains on, rank 1 included
        rank_pid(agent, 1)
    finally:
        kill_job(agent)


@pytest.mark.background(job=second_run_under_the_same_name)
def test_a_second_run_under_the_same_name_is_refused_until_the_first_is_killed():
    background.result(second_run_under_the_same_name)  # asserts all of it (above)


@pytest.mark.background(job=resume_auto_against_a_live_run)
def test_resume_auto_against_a_live_run_is_refused_and_takes_over_once_it_is_killed():
    background.result(resume_auto_against_a_live_run)  # asserts all of it (above)


@pytest.mark.skipif(sys.platform != "linux", reason="finds the rank processes through /proc")
@pytest.mark.background(job=torchrun_job_holding_the_lock)
def test_a_torchrun_job_holds_the_lock_once_not_per_rank():
    background.result(torchrun_job_holding_the_lock)  # asserts all of it (above)


def kill_job(agent: subprocess.Popen) -> None:
    """SIGKILL a torchrun job: its ranks first (torchrun starts them in sessions of their own, which
    a kill of the agent's process group misses), then the agent."""
    for rank in (0, 1):
        with contextlib.suppress(AssertionError, ProcessLookupError):
            os.kill(rank_pid(agent, rank), signal.SIGKILL)
    os.killpg(agent.pid, signal.SIGKILL)
    agent.wait(timeout=SUBPROCESS_TIMEOUT_S)


def test_a_full_disk_while_taking_the_lock_is_one_error_naming_the_lock_file(tmp_path, monkeypatch):
    """The lock's record is the first thing a run writes: a full disk there is the same one-line
    output error as any other write into the run directory, not an OSError traceback."""
    import errno

    from occ_fast.checkpointing import run_lock
    from occ_fast.monitoring.output import OutputError

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_lock.os, "pwrite", full)
    refused = pytest.raises(OutputError, match=r"no space left on device writing .*/run/\.lock")
    with refused, run_lock.hold_run_dir(tmp_path / "run"):
        pytest.fail("the run must not start without its lock")
