"""The session's warm interpreter (``tests/warm_python.py``) stands in for ``python ARGS``: what the
command prints, its exit status, its death by a signal, the signals sent to it and its death by
SIGKILL are those of a fresh ``python ARGS``; a command whose environment differs in a variable read
at import time gets a fresh interpreter. The commands say whether torch was already loaded when they
started (only the warm interpreter preloads it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import warm_python

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the warm interpreter forks (Linux)")

REPORT = """
import os, sys
print("torch loaded at start:", "torch" in sys.modules)
print("name:", __name__, "argv:", sys.argv[1:], "path0:", sys.path[0], "cwd:", os.getcwd())
print("write_through:", sys.stdout.write_through)
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]) if sys.argv[1:] else 0)
"""


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # unless ``env`` sets it
    environ = warm_python.environ(base, **env)
    return subprocess.run(
        [*warm_python.PYTHON, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_script_runs_warm_with_its_arguments_streams_and_exit_status(tmp_path):
    (tmp_path / "report.py").write_text(REPORT)
    done = run(["report.py", "3"], tmp_path)
    assert done.returncode == 3, done.stderr
    assert "torch loaded at start: True" in done.stdout  # started from the warm interpreter
    assert f"name: __main__ argv: ['3'] path0: {tmp_path} cwd: {tmp_path}" in done.stdout
    assert done.stderr == "to stderr\n"


def test_a_module_runs_as_main_from_its_directory_and_u_is_unbuffered(tmp_path):
    (tmp_path / "report_module.py").write_text(REPORT)
    done = run(["-u", "-m", "report_module"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"name: __main__ argv: [] path0: {tmp_path} cwd: {tmp_path}" in done.stdout
    assert "write_through: True" in done.stdout and "torch loaded at start: True" in done.stdout
    assert "write_through: False" in run(["-m", "report_module"], tmp_path).stdout
    assert "write_through: True" in run(["-m", "report_module"], tmp_path, PYTHONUNBUFFERED="1").stdout


def test_another_import_time_variable_gets_a_fresh_interpreter(tmp_path):
    (tmp_path / "report.py").write_text(REPORT)
    done = run(["report.py"], tmp_path, OMP_NUM_THREADS="2")
    assert done.returncode == 0, done.stderr
    assert "torch loaded at start: False" in done.stdout
    assert "torch loaded at start: True" in run(["report.py"], tmp_path, COLUMNS="123").stdout


def test_death_by_a_signal_and_signals_sent_to_the_stand_in_are_the_commands(tmp_path):
    (tmp_path / "die.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert run(["die.py"], tmp_path).returncode == -signal.SIGKILL
    (tmp_path / "wait.py").write_text(
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM'), sys.exit(7)))\n"
        "pathlib.Path('ready').touch()\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [*warm_python.PYTHON, "wait.py"],
        cwd=tmp_path,
        env=warm_python.environ(os.environ),
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (tmp_path / "ready").exists())
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (7, "got SIGTERM\n")


def test_sigkill_of_the_stand_in_kills_the_command(tmp_path):
    (tmp_path / "sleep.py").write_text(
        "import os, pathlib, time\npathlib.Path('pid').write_text(str(os.getpid()))\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [*warm_python.PYTHON, "sleep.py"], cwd=tmp_path, env=warm_python.environ(os.environ)
    )
    wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text())
    command = int((tmp_path / "pid").read_text())
    assert command != proc.pid
    proc.kill()
    proc.wait()
    wait_for(lambda: not alive(command))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def wait_for(ready, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
