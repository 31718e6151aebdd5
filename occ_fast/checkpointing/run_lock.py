"""One run per directory: a second trainer on a live run's directory is refused, naming the holder.

Two processes in one run directory overwrite each other's ``config.yaml``, metrics and checkpoints
(a resume started beside a live run trained on in the same place, and both exited 0). The lock is
an OS lock, ``flock`` on ``RUN_DIR/.lock``: the kernel releases it when its process dies, however it
dies, so a killed run never leaves a live lock. The file also holds a JSON record of the holder
(pid, host, start time, command) for the refusal to name. Any exit the process lives through
(errors and signals included) empties the record; one left behind without a held lock is the stale
lock of a killed run, taken over with a note. The file itself is never deleted: a process that
opened it just before a deletion would lock a file that the next run no longer sees.

Under torchrun the job holds the lock, not each rank: rank 0 takes it (``RANK`` is set before the
process group exists, and the lock comes first, before anything is written into the run directory).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from occ_fast.monitoring.output import OutputError, describe, ensure_writable

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunDirInUse(OutputError):
    """Another live process holds the run directory."""


@contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for the ``with`` block (rank 0 of a torchrun job; other ranks hold nothing);
    raise :class:`RunDirInUse` naming the holder if another process holds it."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    ensure_writable(run_dir)  # a path that is a file, or no permission: one line naming it
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OutputError(f"{describe(err)} writing {run_dir / LOCK_FILE}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirInUse(
                f"{run_dir} is in use by {_describe(_read(fd))}: wait for it to end or stop it, "
                "or choose another --run.name"
            ) from None
        stale = _read(fd)
        if stale:
            logger.warning(
                "%s: took over the stale lock of %s, which ended without releasing it (killed?)",
                run_dir,
                _describe(stale),
            )
        try:
            _write(fd, json.dumps(_holder()).encode())
        except OSError as err:  # the first write into the run directory: a full disk shows here
            raise OutputError(f"{describe(err)} writing {run_dir / LOCK_FILE}") from None
        try:
            yield
        finally:  # any end this process lives through, errors and signals included
            _write(fd, b"")
    finally:
        os.close(fd)  # releases the lock


def _holder() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().isoformat(sep=" ", timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
    }


def _describe(record: dict[str, object]) -> str:
    if not record:  # the holder is between taking the lock and writing its record
        return "another process"
    return (
        f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}, "
        f"command: {record.get('command')}"
    )


def _read(fd: int) -> dict[str, object]:
    """The holder record; empty when released cleanly (or torn by a kill while it was written)."""
    size = os.fstat(fd).st_size
    try:
        record = json.loads(os.pread(fd, size, 0)) if size else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _write(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
