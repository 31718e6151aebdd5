"""Commands the suite runs in subprocesses, started early on the second core while the in-process
tests run on the first.

A test marked ``@pytest.mark.background(job=FN)`` asserts on what ``FN(directory)`` returns, through
:func:`result`. ``tests/conftest.py`` queues the job of every selected test when the session starts,
in the order the tests run, and one worker thread runs them one at a time; a test whose job has not
finished runs the next queued jobs meanwhile (so that the first core does not idle), then waits for
it. A job does what its test did inline (the same command, arguments, working
directory and environment) and raises what it raised, so the test checks exactly what it checked;
only the moment the command runs moves. Jobs get the environment of the session's start
(:data:`ENV`), not whatever a test running beside them has patched into ``os.environ``; they run
their commands through :func:`run`, which the session's end can stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ENV: dict[str, str] = dict(os.environ)  # replaced by start() with the environment the session starts with
_lock = threading.Lock()
_jobs: dict[tuple[str, str], _Job] = {}
_queue: list[_Job] = []
_procs: set[subprocess.Popen] = set()
_worker: threading.Thread | None = None
_stopping = threading.Event()
_directory: Callable[[str], Path] | None = None
_finalizers: list[Callable[[], None]] = []
_in_queued_job = threading.local()  # .depth: queued jobs running on this thread


class _Job:
    def __init__(self, fn: Callable[[Path], Any]) -> None:
        self.fn, self.state, self.done = fn, "queued", threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            directory = _directory(self.fn.__name__) if _directory else Path(tempfile.mkdtemp())
            self.value = self.fn(directory)
        except BaseException as error:  # re-raised in the test that asks for the result
            self.error = error
        finally:
            self.done.set()


def _key(fn: Callable) -> tuple[str, str]:
    return fn.__module__, fn.__qualname__


def _claim(job: _Job) -> bool:
    with _lock:
        if job.state != "queued":
            return False
        job.state = "running"
        return True


def _run_queued(job: _Job) -> None:
    """Run a queued job on this thread, with the session's environment (:func:`environ`)."""
    _in_queued_job.depth = getattr(_in_queued_job, "depth", 0) + 1
    try:
        job.run()
    finally:
        _in_queued_job.depth -= 1


def _claim_next() -> _Job | None:
    with _lock:
        for job in _queue:
            if job.state == "queued" and not _stopping.is_set():
                job.state = "running"
                return job
    return None


def _work() -> None:
    while (job := _claim_next()) is not None:
        _run_queued(job)


def start(fns: list[Callable[[Path], Any]], directory: Callable[[str], Path]) -> None:
    """Queue ``fns`` (once each, in this order) and start the worker; ``directory(name)`` gives a job a fresh directory."""
    global _worker, _directory
    ENV.clear()
    ENV.update(os.environ)
    _directory = directory
    for fn in fns:
        if _key(fn) not in _jobs:
            _jobs[_key(fn)] = job = _Job(fn)
            _queue.append(job)
    if _queue:
        _worker = threading.Thread(target=_work, name="background-jobs", daemon=True)
        _worker.start()


def stop() -> None:
    """Start no further job, end the commands still running, and wait for the worker."""
    _stopping.set()
    with _lock:
        for proc in _procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    if _worker is not None:
        _worker.join()
    while _finalizers:
        _finalizers.pop()()


def at_stop(fn: Callable[[], None]) -> None:
    """Call ``fn`` when the session ends (after the worker), e.g. to remove what jobs wrote outside a temporary directory."""
    _finalizers.append(fn)


def environ() -> Mapping[str, str]:
    """The environment a command starts from: :data:`ENV` in a queued job, this process's in a test."""
    return ENV if getattr(_in_queued_job, "depth", 0) else os.environ


def track(proc: subprocess.Popen) -> subprocess.Popen:
    """Let :func:`stop` end ``proc``'s process group (started with ``start_new_session=True``) if it still runs."""
    with _lock:
        _procs.add(proc)
    return proc


def result(fn: Callable[[Path], Any]) -> Any:
    """What ``fn`` returned (raising what it raised): the queued run's, waited for, or run here if
    nothing queued it (or if a queued job asks, for a job it depends on). While it waits,
    the asking thread runs the next queued jobs, so that no core idles while a job runs."""
    with _lock:
        job = _jobs.get(_key(fn))
        if job is None:
            _jobs[_key(fn)] = job = _Job(fn)
    if (job not in _queue or getattr(_in_queued_job, "depth", 0) or _stopping.is_set()) and _claim(job):
        job.run()
    while not job.done.is_set() and (other := _claim_next()) is not None:
        _run_queued(other)
    job.done.wait()
    if job.error is not None:
        raise job.error
    return job.value


def run(
    argv: list[str], *, cwd: Path | str | None = None, env: dict[str, str] | None = None, timeout: float
) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, capture_output=True, text=True, stdin=DEVNULL)`` that :func:`stop` can end
    (the command and what it started). Output goes through files, so a long log never fills a pipe."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(environ()) if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        with _lock:
            _procs.add(proc)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out.seek(0)
            err.seek(0)
            timed_out.output, timed_out.stderr = out.read(), err.read()
            raise
        finally:
            with _lock:
                _procs.discard(proc)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())
