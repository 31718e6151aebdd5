"""Reward worker processes with a hard per-item wall-clock limit.

A reward function can hang in C code that no signal interrupts (sympy on a pathological
expression, a regex blow-up), so the only robust limit is to kill the process: each worker scores
one item at a time, and a worker past its item's deadline is killed and replaced while the other
workers go on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import occ_fast
from occ_fast import threads
from occ_fast.rewards.result import RewardResult


@dataclass
class _Worker:
    proc: subprocess.Popen
    inbox: Connection  # parent -> worker
    outbox: Connection  # worker -> parent
    started: float
    item: int | None = None
    deadline: float = 0.0
    ready: bool = False

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.inbox.close()
        self.outbox.close()


class WorkerPool:
    """``num_workers`` subprocesses running the reward function ``spec`` with a per-item time limit."""

    def __init__(self, spec: str, num_workers: int, timeout_s: float, start_timeout_s: float = 120.0) -> None:
        if num_workers < 1:
            raise ValueError(f"WorkerPool needs num_workers >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"reward timeout_s must be > 0, got {timeout_s}")
        self.spec = spec
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._workers = [self._start() for _ in range(num_workers)]
        # a worker stuck in a hung item would outlive the trainer: kill them all at exit or collection
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)

    def _start(self) -> _Worker:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "occ_fast.rewards.worker",
                *map(str, (to_child_r, from_child_w, os.getpid())),
            ],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            env=_child_env(),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        worker = _Worker(
            proc,
            Connection(to_child_w, readable=False),
            Connection(from_child_r, writable=False),
            time.monotonic(),
        )
        worker.inbox.send((list(sys.path), self.spec))
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = self._start()

    def score(self, completions: Sequence[str], ground_truths: Sequence[str]) -> RewardResult:
        """Score every item; time-outs, exceptions and worker crashes give 0 and are counted."""
        result = RewardResult(rewards=[0.0] * len(completions))
        queue = deque(range(len(completions)))
        while queue or any(w.item is not None for w in self._workers):
            self._dispatch(queue, completions, ground_truths)
            now = time.monotonic()
            waiting = [w for w in self._workers if w.item is not None or not w.ready]
            deadlines = [w.deadline if w.ready else w.started + self.start_timeout_s for w in waiting]
            by_conn = {w.outbox: w for w in waiting}
            for conn in wait(list(by_conn), timeout=max(0.0, min(deadlines) - now)):
                self._receive(by_conn[conn], result)
            now = time.monotonic()
            for w in list(self._workers):
                if w.item is not None and now > w.deadline:
                    result.num_timeouts += 1
                    result.errors.append(f"item {w.item}: timed out after {self.timeout_s} s")
                    self._replace(w)
                elif not w.ready and now > w.started + self.start_timeout_s:
                    raise RuntimeError(
                        f"reward worker for {self.spec!r} did not start within {self.start_timeout_s} s"
                    )
        return result

    def _dispatch(self, queue: deque[int], completions: Sequence[str], ground_truths: Sequence[str]) -> None:
        for w in self._workers:
            if queue and w.ready and w.item is None:
                index = queue.popleft()
                try:
                    w.inbox.send((index, completions[index], ground_truths[index]))
                except OSError:  # died while idle: retry the item on a fresh worker
                    queue.appendleft(index)
                    self._replace(w)
                    continue
                w.item, w.deadline = index, time.monotonic() + self.timeout_s

    def _receive(self, w: _Worker, result: RewardResult) -> None:
        try:
            message = w.outbox.recv()
        except (EOFError, OSError):
            if w.item is None:  # died before taking work
                raise RuntimeError(
                    f"reward worker for {self.spec!r} exited during start-up (code {w.proc.wait()})"
                ) from None
            result.num_errors += 1
            result.errors.append(f"item {w.item}: reward worker exited (code {w.proc.wait()})")
            self._replace(w)
            return
        if message[0] == "ready":
            w.ready = True
        elif message[0] == "fatal":
            raise RuntimeError(f"reward worker failed to load {self.spec!r}: {message[1]}")
        else:
            index, status, value = message
            w.item = None
            if status == "ok":
                result.rewards[index] = value
            else:
                result.num_errors += 1
                result.errors.append(f"item {index}: {value}")

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.inbox.send(None)
        for w in self._workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=1.0)
        self._finalizer()


def _child_env() -> dict[str, str]:
    """This process's environment, with occ_fast importable even when it is not installed."""
    root = str(Path(occ_fast.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env | threads.WORKER_ENV


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.kill()
    workers.clear()
