"""Peak host memory of this process, for CPU runs (CPU tensors have no allocator statistics).

Linux keeps the resident high-water mark (``VmHWM``) per process and lets a process reset it by
writing ``5`` to ``/proc/self/clear_refs``; with glibc's mmap threshold fixed
(``MALLOC_MMAP_THRESHOLD_``), freed large tensors leave the resident set, so the mark tracks the
peak of live tensor memory.
"""

from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def supported() -> bool:
    return _STATUS.exists() and _CLEAR_REFS.exists()


def reset_peak_rss() -> None:
    """Make the current resident size the new high-water mark."""
    _CLEAR_REFS.write_text("5")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{_STATUS} has no {field} line")


def peak_rss_bytes() -> int:
    """Resident high-water mark since the last :func:`reset_peak_rss` (or process start)."""
    return _status_kib("VmHWM") * 1024


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024
