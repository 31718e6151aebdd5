"""Faults under torchrun (2 CPU ranks, gloo): SIGTERM to one rank stops both after the same step
with one checkpoint; SIGKILL of one rank mid-run is recovered by ``--run.resume auto``; the run that
went through both ends where an uninterrupted one does. Rollouts are sampled with each prompt's own
seed (``tests/seeded_rollouts.py``), as in ``tests/test_train_distributed.py``, so the 2-rank run and
the single-process reference sample the same completions. The torchrun parts run early, as
background jobs (``tests/background.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import background
import pytest
import seeded_rollouts
import torch
import warm_python
from faults_helpers import TESTS_DIR, trainer_env
from test_train_distributed import COMPARED, TORCHRUN_TIMEOUT_S, argv, metrics, weights

from occ_fast.checkpointing.files import find_latest
from occ_fast.config import parse_config
from occ_fast.train import train

STEPS = 4


def start_torchrun(args: list[str]) -> subprocess.Popen:
    agent = subprocess.Popen(
        warm_python.torchrun(2, str(TESTS_DIR / "seeded_rollouts.py"), *args, fresh_agent=True),
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return background.track(agent)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=TORCHRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun hung:\n{output[-6000:]}")
    return proc.returncode, output


def rank_pid(agent: subprocess.Popen, rank: int) -> int:
    """The pid of the trainer process of ``rank`` among the torchrun agent's children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == agent.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} under torchrun pid {agent.pid}")


def wait_for_checkpoint(run_dir: Path, after: int, agent: subprocess.Popen) -> int:
    """Wait until the run has a complete checkpoint of a step > ``after``; return that step."""
    deadline = time.monotonic() + TORCHRUN_TIMEOUT_S
    while time.monotonic() < deadline and agent.poll() is None:
        latest = find_latest(run_dir)
        if latest is not None and int(latest.name.split("_")[1]) > after:
            return int(latest.name.split("_")[1])
        time.sleep(0.05)
    os.killpg(agent.pid, signal.SIGKILL)
    pytest.fail(
        f"no checkpoint after step {after} (torchrun exit {agent.poll()}):\n{agent.communicate()[0][-6000:]}"
    )


def interrupted_run(tmp_path: Path) -> Path | None:
    """Steps 1-3 of the test below, under ``tmp_path`` (returned; None off Linux, where it is skipped)."""
    if sys.platform != "linux":
        return None
    run_dir = tmp_path / "faulty"
    args = argv(tmp_path, "faulty", STEPS)

    # 1. SIGTERM to rank 1 alone once step 0 is saved: both ranks stop after the same step.
    agent = start_torchrun(args)
    wait_for_checkpoint(run_dir, -1, agent)
    os.kill(rank_pid(agent, 1), signal.SIGTERM)
    code, output = finish(agent)
    assert code != 0
    stopped = int(find_latest(run_dir).name.split("_")[1])
    assert stopped < STEPS - 1, "the signal came too late to test anything"
    lines = [line for line in output.splitlines() if "resume with: torchrun --nproc-per-node 2" in line]
    assert len(lines) == 1 and f"after step {stopped}:" in lines[0], output[-4000:]
    assert [m["step"] for m in metrics(run_dir)] == list(range(stopped + 1))

    # 2. Resume; SIGKILL rank 1 once a further step is saved: the job dies, the checkpoints stay.
    agent = start_torchrun([*args, "--run.resume", "auto"])
    wait_for_checkpoint(run_dir, stopped, agent)
    os.kill(rank_pid(agent, 1), signal.SIGKILL)
    code, output = finish(agent)
    assert code != 0

    # 3. Resume again, to the end.
    code, output = finish(start_torchrun([*args, "--run.resume", "auto"]))
    assert code == 0, output[-6000:]
    return tmp_path


@pytest.mark.skipif(sys.platform != "linux", reason="finds the rank processes through /proc")
@pytest.mark.background(job=interrupted_run)
def test_sigterm_to_one_rank_then_sigkill_then_resume_ends_like_an_uninterrupted_run(monkeypatch):
    tmp_path = background.result(interrupted_run)  # 1.-3. (above)
    run_dir = tmp_path / "faulty"
    seeded_rollouts.install(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run (OMP_NUM_THREADS=1): see test_train_distributed.one_thread
    try:
        train(parse_config(argv(tmp_path, "single", STEPS)))  # the uninterrupted reference
    finally:
        torch.set_num_threads(threads)
    got, want = metrics(run_dir), metrics(tmp_path / "single")
    assert [m["step"] for m in got] == list(range(STEPS))
    for g, w in zip(got, want):
        for key in COMPARED:
            if key in w:
                assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (g["step"], key)
    got_weights, want_weights = weights(run_dir), weights(tmp_path / "single")
    for name in want_weights:
        torch.testing.assert_close(got_weights[name], want_weights[name], rtol=0, atol=4e-6, msg=name)


def full_disk_run(tmp_path: Path) -> None:
    """The test below, under ``tmp_path``."""
    run_dir = tmp_path / "r"
    agent = subprocess.Popen(
        warm_python.torchrun(
            2, str(TESTS_DIR / "full_disk_metrics.py"), *argv(tmp_path, "r", STEPS, "--run.save-every", "0")
        ),
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    code, output = finish(background.track(agent))
    assert code == 1, output[-6000:]
    checkpoint = run_dir / "checkpoints" / "step_000000001"
    lines = [line for line in output.splitlines() if "no space left on device" in line]
    assert len(lines) == 1, output[-6000:]
    assert (
        f"no space left on device writing {run_dir / 'metrics.jsonl'} at step 1: stopped at checkpoint "
        f"{checkpoint}; resume with: torchrun --nproc-per-node 2"
    ) in " ".join(lines[0].split()), output[-6000:]
    assert find_latest(run_dir) == checkpoint


@pytest.mark.background(job=full_disk_run)
def test_full_disk_on_rank_0_stops_every_rank_at_a_checkpoint_of_the_step():
    """Only rank 0 writes metrics, so only rank 0 meets a full disk there: every rank must stop at the
    same step, with a checkpoint of it that all of them wrote, instead of rank 1 waiting for rank 0
    in the next step's collectives until the process group times out."""
    background.result(full_disk_run)  # asserts all of it (above)
