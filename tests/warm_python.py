"""``python tests/warm_python.py ARGS`` behaves as ``python ARGS``, started from the session's warm
interpreter (``tests/warm_python_server.py``) when one serves ``$OCC_FAST_WARM_PYTHON``, else from a
fresh one (``exec``). It stays in between as the command's stand-in: signals sent to it are passed
on, it exits with the command's status (or dies of the command's signal), and its death (SIGKILL)
kills the command. Only the standard library loads here, so the stand-in starts in milliseconds.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

SOCKET_ENV = "OCC_FAST_WARM_PYTHON"
TESTS = Path(__file__).resolve().parent
PYTHON = [sys.executable, str(TESTS / "warm_python.py")]  # in place of [sys.executable]
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def torchrun(nproc: int, *command: str, fresh_agent: bool = False) -> list[str]:
    """``torchrun --standalone --nproc_per_node NPROC COMMAND``, whose ranks (``python -u COMMAND``, as
    torchrun starts them) start from the warm interpreter, and so does torchrun itself unless
    ``fresh_agent`` (a test that finds the ranks among the children of the process it started)."""
    agent = [sys.executable] if fresh_agent else PYTHON
    return [
        *agent, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "--no-python", *PYTHON, "-u", *command,
    ]  # fmt: skip


def environ(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """``base`` as the warm interpreter was started with it: one intra-op thread (OpenMP reads
    OMP_NUM_THREADS when torch loads), ``tests/`` importable; a command with another value of such a
    variable runs in a fresh interpreter. None of this process's torchrun rank variables reach it."""
    env = {k: v for k, v in {**base, "OMP_NUM_THREADS": "1", **extra}.items() if k not in RANK_ENV}
    rest = [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(TESTS)]
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *rest])
    return env


@contextlib.contextmanager
def server(directory: Path) -> Iterator[None]:
    """Serve this session's commands from a warm interpreter (its log: ``directory/warm-python.log``)."""
    path = directory / "warm-python.sock"
    os.environ[SOCKET_ENV] = str(path)
    with (directory / "warm-python.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(TESTS / "warm_python_server.py"), str(path)],
            env=environ(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # it listens before it imports: the first commands wait in its backlog
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        del os.environ[SOCKET_ENV]


def fresh() -> None:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])


def main() -> int:
    path = os.environ.get(SOCKET_ENV)
    command = [arg for arg in sys.argv[1:] if arg != "-u"][:1]  # -u: torchrun's ranks
    if not path or not command or (command[0].startswith("-") and command[0] != "-m"):
        fresh()  # no server, or a form it does not serve (-c, other options)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        server.connect(path)
    except OSError:
        fresh()
    request = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(server, [json.dumps(request).encode()], [0, 1, 2])
    reply = json.loads(server.recv(1 << 16))
    if "pid" not in reply:
        fresh()
    pid = reply["pid"]

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    status = server.recv(1 << 16)
    if not status:
        print(f"warm_python: the server at {path} ended before the command did", file=sys.stderr)
        return 1
    code = json.loads(status)["exit"]
    if code < 0:  # die of the command's signal
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
