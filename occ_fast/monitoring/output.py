"""Writing the run directory: problems found before any work (a path that is a file, no permission)
and while writing ``config.yaml``, metrics or a checkpoint (a full disk) become one line naming the
path, never a traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from occ_fast.monitoring.health import TrainingHalted


class OutputError(RuntimeError):
    """The run directory cannot be written."""


class CheckpointWriteError(TrainingHalted):
    """A checkpoint could not be written; the run stops, naming the last good one."""


def ensure_writable(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents) and write a probe file there, or raise :class:`OutputError`."""
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"cannot write the run directory {run_dir}: {e.strerror or e} (choose another --run.output-dir)"
        ) from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file renamed into place, so that a failure (a full disk)
    leaves the old file or none, never an empty or torn one; raise :class:`OutputError`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{describe(e)} writing {path}") from None


def describe(exc: OSError) -> str:
    """What went wrong, in the words of the messages: 'no space left on device', else the OS's."""
    return "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


def checkpoint_write_error(
    exc: BaseException, target: Path, last_good: Path | None
) -> CheckpointWriteError | None:
    """What to tell the user about ``exc`` raised while writing checkpoint ``target``; None when it is
    not a file-system failure (a bug, which keeps its traceback)."""
    cause = _os_error(exc)
    if cause is None:
        return None
    what = describe(cause)
    good = (
        f"the last good one is {last_good}" if last_good is not None else "no checkpoint was saved before it"
    )
    return CheckpointWriteError(f"{what} writing checkpoint {target}; {good}")


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: itself, its cause/context (torch.save wraps it in a RuntimeError),
    or one spelled out in a message (safetensors: '... (os error 28)')."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc
        if "os error 28" in str(exc):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        exc = exc.__cause__ or exc.__context__
    return None
