"""One Python interpreter with the trainer's imports done, forked once for each command the tests run
through ``tests/warm_python.py``: ``python -m occ_fast.train`` spends about 4 s of CPU importing
torch and transformers before it does anything, and the suite starts it dozens of times.

``python tests/warm_python_server.py SOCKET`` listens first, then imports, then serves. A request is
the client's argv, working directory and environment, with its stdin, stdout and stderr; the server
forks, and the child becomes that command: its own session, the client's streams rebuilt as Python
builds them at start-up, the client's directory and environment, ``sys.argv``/``sys.orig_argv``/
``sys.path[0]`` as ``python`` sets them, and then the module (``-m``, executed afresh as
``__main__``) or script run to the end of this file, so that it exits as that command would (status,
traceback, ``atexit``). A request whose environment differs from the server's in a variable read
while importing (:data:`IMPORT_TIME`) is answered "fresh": the client then runs a new interpreter.
The client hears the child's exit status; if the client dies first (SIGKILL), the child is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import runpy
import select
import signal
import socket
import sys

PRELOAD = ("occ_fast.train", "occ_fast.eval", "torch.distributed.run")
# Variables read while Python, torch, Triton or the libraries they load start: a command whose
# value differs runs in a fresh interpreter. TORCHELASTIC_* and TORCH_NCCL_* are torchrun's run-time
# settings for its ranks; PYTHONUNBUFFERED is applied when the child rebuilds its streams.
IMPORT_TIME = (
    "PYTHON",
    "TRITON",
    "OMP_",
    "GOMP_",
    "KMP_",
    "MKL_",
    "CUDA",
    "LD_",
    "HF_",
    "TRANSFORMERS",
    "TOKENIZERS",
    "TORCH",
    "OCC_FAST",
)
RUN_TIME = ("TORCHELASTIC_", "TORCH_NCCL_", "PYTHONUNBUFFERED")
PR_SET_PDEATHSIG = 1


def import_time_differences(env: dict[str, str], own: dict[str, str]) -> list[str]:
    names = set(env) | set(own)
    return sorted(
        name
        for name in names
        if name.startswith(IMPORT_TIME) and not name.startswith(RUN_TIME) and env.get(name) != own.get(name)
    )


def serve(path: str) -> tuple[dict, list[int]]:
    """Fork a child per request until killed; returns ``(request, fds)`` in each child."""
    started_with = dict(os.environ)  # the imports below add to os.environ (OMP_WAIT_POLICY, ...)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    for name in PRELOAD:  # clients that connect meanwhile wait in the backlog
        __import__(name)
    clients: dict[socket.socket, int] = {}
    try:
        while True:
            ready, _, _ = select.select([listener, *clients], [], [], 0.05)
            for sock in ready:
                if sock is not listener:  # the client died before its command: so does the command
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(clients.pop(sock), signal.SIGKILL)
                    sock.close()
                    continue
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                request = json.loads(message)
                if fresh := import_time_differences(request["env"], started_with):
                    print(
                        f"fresh: {request['argv'][:2]}: {', '.join(fresh)} differ",
                        file=sys.stderr,
                        flush=True,
                    )
                    conn.send(json.dumps({"fresh": fresh}).encode())
                    conn.close()
                    for fd in fds:
                        os.close(fd)
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    for sock in clients:
                        sock.close()
                    return request, fds
                for fd in fds:
                    os.close(fd)
                conn.send(json.dumps({"pid": pid}).encode())
                clients[conn] = pid
            reap(clients)
    finally:
        if os.getpid() == server_pid:
            for pid in clients.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def reap(clients: dict[socket.socket, int]) -> None:
    """Tell each client whose command exited its exit status (negative: the signal that ended it)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        for sock, child in list(clients.items()):
            if child == pid:
                with contextlib.suppress(OSError):
                    sock.send(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode())
                sock.close()
                del clients[sock]


def std_streams(unbuffered: bool) -> tuple[io.TextIOWrapper, io.TextIOWrapper, io.TextIOWrapper]:
    """stdin, stdout and stderr over fds 0-2 as Python's start-up makes them (``-u`` included)."""

    def stream(fd: int, mode: str, errors: str, line: bool) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = (
            raw
            if unbuffered and mode == "wb"
            else (io.BufferedWriter if mode == "wb" else io.BufferedReader)(raw)
        )
        return io.TextIOWrapper(
            buffered,
            encoding=sys.stdout.encoding,
            errors=errors,
            line_buffering=line,
            write_through=unbuffered,
        )

    interactive = [os.isatty(fd) for fd in (0, 1, 2)]
    return (
        stream(0, "rb", "strict", interactive[0]),
        stream(1, "wb", "strict", interactive[1] and not unbuffered),
        stream(2, "wb", "backslashreplace", not unbuffered),
    )


def become(request: dict, fds: list[int]) -> None:
    """In the forked child: take on the client's command, then run it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    sys.orig_argv = [sys.executable, *argv]
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    while argv[0] == "-u":
        argv, unbuffered = argv[1:], True
    streams = std_streams(unbuffered)
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
    if argv[0] == "-m":
        sys.argv = ["-m", *argv[2:]]
        sys.path[0] = os.getcwd()
        sys.modules.pop(argv[1], None)  # executed afresh as __main__, as ``python -m`` does
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


def stop(signum: int, frame: object) -> None:
    raise SystemExit(0)  # through serve's ``finally``: the children go with the server


if __name__ == "__main__":
    server_pid = os.getpid()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the session that started it ended
    signal.signal(signal.SIGTERM, stop)
    become(*serve(sys.argv[1]))
