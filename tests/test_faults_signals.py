"""Ctrl-C and SIGTERM sent to a real training process: the step finishes, a checkpoint is written,
one line gives the command that resumes, and that command continues the run; a second signal exits
at once, unless it comes within REPEAT_GRACE_S of the first (torchrun's copy of the same Ctrl-C)."""

from __future__ import annotations

import json
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest
from faults_helpers import Trainer, fast_args, run_trainer

from occ_fast.checkpointing.files import find_latest
from occ_fast.monitoring.interrupt import REPEAT_GRACE_S


def steps_logged(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_saves_the_step_and_prints_the_command_that_resumes(tmp_path):
    run_dir = tmp_path / "r"
    trainer = Trainer(fast_args(tmp_path, "r", "--train.steps", "12", "--run.save-every", "0"))
    trainer.wait_for(lambda: steps_logged(run_dir), "its first step")
    trainer.signal(signal.SIGTERM)
    code, output = trainer.finish()
    assert code == 128 + signal.SIGTERM, output[-3000:]
    last = steps_logged(run_dir)[-1]
    assert last < 11, "the signal came too late to test anything"
    assert find_latest(run_dir).name == f"step_{last:09d}"
    stop_lines = [line for line in output.splitlines() if "resume with:" in line]
    assert len(stop_lines) == 1, output[-3000:]
    assert f"interrupted (SIGTERM) after step {last}" in stop_lines[0]
    assert "Traceback" not in output

    command = shlex.split(re.search(r"resume with: (.+)$", stop_lines[0]).group(1))
    assert command[:3] == ["python", "-m", "occ_fast.train"]
    code, output = run_trainer(command[3:])
    assert code == 0, output[-3000:]
    assert steps_logged(run_dir) == list(range(12))


def test_a_second_sigint_exits_at_once_without_saving(tmp_path):
    run_dir, flag = tmp_path / "r", tmp_path / "hanging"
    trainer = Trainer(
        fast_args(
            tmp_path, "r", "--train.steps", "12", "--run.save-every", "0",
            "--reward.fn", "fault_rewards:hang_after_calls", "--reward.timeout-s", "600",
        ),
        FAULT_HANG_AFTER="16", FAULT_HANG_FLAG=str(flag),
    )  # fmt: skip
    trainer.wait_for(flag.exists, "the hanging reward of step 1")
    trainer.signal(signal.SIGINT)
    time.sleep(1.5)
    assert trainer.proc.poll() is None, "the first SIGINT must let the step finish"
    started = time.monotonic()
    trainer.signal(signal.SIGINT)
    code, output = trainer.finish(timeout=30)
    assert time.monotonic() - started < 10
    assert code == 128 + signal.SIGINT, output[-3000:]
    assert "second SIGINT: exiting now without saving" in output
    assert find_latest(run_dir) is None


def test_two_sigints_in_quick_succession_stop_like_one(tmp_path):
    """One Ctrl-C in a terminal running torchrun reaches each rank twice: from the terminal and
    forwarded by torchrun. A second signal within REPEAT_GRACE_S of the first is that same Ctrl-C:
    the step still finishes and is saved, and the run stops with the line that resumes it."""
    run_dir, paused, release = tmp_path / "r", tmp_path / "paused", tmp_path / "release"
    trainer = Trainer(
        fast_args(
            tmp_path, "r", "--train.steps", "12", "--run.save-every", "0",
            "--reward.fn", "fault_rewards:pause_after_calls", "--reward.timeout-s", "600",
        ),
        FAULT_PAUSE_AFTER="16", FAULT_PAUSE_FLAG=str(paused), FAULT_RELEASE_FLAG=str(release),
    )  # fmt: skip
    trainer.wait_for(paused.exists, "the paused reward of step 1")
    sent = time.monotonic()
    trainer.signal(signal.SIGINT)
    trainer.wait_for(lambda: "SIGINT received" in trainer.output, "handling the first SIGINT")
    trainer.signal(signal.SIGINT)
    assert time.monotonic() - sent < REPEAT_GRACE_S, "the second signal came too late to test anything"
    time.sleep(0.5)
    assert trainer.proc.poll() is None, "the second SIGINT of one Ctrl-C must not end the run"
    release.touch()
    code, output = trainer.finish()
    assert code == 128 + signal.SIGINT, output[-3000:]
    assert "second SIGINT" not in output
    last = steps_logged(run_dir)[-1]
    assert find_latest(run_dir).name == f"step_{last:09d}"
    stop_lines = [line for line in output.splitlines() if "resume with:" in line]
    assert len(stop_lines) == 1 and f"interrupted (SIGINT) after step {last}" in stop_lines[0], output[-3000:]


def loading_torch(pid: int) -> bool:
    """Whether process ``pid`` has mapped torch's C++ library: it is inside its start-up imports."""
    try:
        return "libtorch" in (Path("/proc") / str(pid) / "maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="watches the imports through /proc")
def test_ctrl_c_during_start_up_imports_is_one_line(tmp_path):
    trainer = Trainer(fast_args(tmp_path, "r"), fresh=True)  # its imports are what it interrupts
    trainer.wait_for(lambda: loading_torch(trainer.proc.pid), "importing torch")
    trainer.signal(signal.SIGINT)
    code, output = trainer.finish()
    assert code == 128 + signal.SIGINT, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert output.strip().splitlines() == [
        "interrupted (SIGINT) during start-up: no step was trained; rerun the same command to start"
    ]
    assert not (tmp_path / "r").exists()
