"""The on-disk protocol shared by single-process (:mod:`occ_fast.checkpointing.single_process`) and sharded
(:mod:`occ_fast.checkpointing.sharded`) checkpoints.

``run_dir/checkpoints/step_000000042/`` is written as ``.tmp-step_000000042`` and renamed into place
once complete; ``meta.json`` is its last file, so a step directory with a ``meta.json`` is a complete
checkpoint of either format. A re-saved step is first moved aside as ``.trash-step_...``; an
interrupted save is cleaned up (or the moved-aside checkpoint put back) by the next save.

``meta.json`` also holds the manifest: the size and sha256 of every other file, so that a checkpoint
damaged after its save (a truncated copy, a flipped bit, which would otherwise load silently) is
found before it is loaded (:func:`damage`). sha256 runs at about 1.7 GB/s a core (SHA-NI), about
the speed of reading the checkpoint back; the file is then in the page cache for the load itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

CHECKPOINTS_SUBDIR = "checkpoints"
SCHEDULER_FILE = "scheduler.pt"
EXTRA_FILE = "extra.pt"
META_FILE = "meta.json"  # written last: its presence marks a complete checkpoint
MANIFEST = "manifest"  # meta.json's {path: [bytes, sha256]} of every other file of the checkpoint

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_PLAIN_TYPES = (str, int, float, bool, type(None), torch.Tensor)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not fit the model/optimizer it is loaded into."""


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    extra: dict[str, Any]


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_SUBDIR / f"step_{step:09d}"


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir`` (either format), or None when it has none."""
    complete = complete_checkpoints(Path(run_dir) / CHECKPOINTS_SUBDIR)
    return complete[-1] if complete else None


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete step directories, oldest first."""
    return [entry for entry in step_dirs(checkpoints) if (entry / META_FILE).is_file()]


def step_dirs(checkpoints: Path) -> list[Path]:
    """Step directories, complete or not, oldest first: one without ``meta.json`` is no interrupted
    save (those are staged under another name) but a damaged checkpoint."""
    if not checkpoints.is_dir():
        return []
    found = [(int(m.group(1)), e) for e in checkpoints.iterdir() if (m := _STEP_DIR.match(e.name))]
    return [entry for _, entry in sorted(found)]


def check_save_args(step: int, keep_last: int | None, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a save's step, ``keep_last`` and ``extra``; return ``extra`` as a plain dict."""
    if step < 0:
        raise ValueError(f"save_checkpoint: step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"save_checkpoint: keep_last must be >= 1 or None, got {keep_last}")
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    return extra


def open_staging(final: Path) -> Path:
    """Create the temporary directory a checkpoint is written into, after cleaning up any earlier
    interrupted save."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final.parent)
    tmp = staging_dir(final)
    tmp.mkdir()
    return tmp


def staging_dir(final: Path) -> Path:
    """Where the checkpoint that will live at ``final`` is written (hidden from :func:`find_latest`)."""
    return final.parent / f"{_TMP_PREFIX}{final.name}"


def publish(tmp: Path, final: Path, meta: Mapping[str, Any], keep_last: int | None) -> None:
    """Write ``meta.json`` last, rename the staged checkpoint into place durably, and prune all but
    the newest ``keep_last`` complete checkpoints and, when ``meta`` records the run's health, the
    newest known healthy (:func:`last_healthy`): keep_last alone would delete the last good checkpoint
    once enough were saved while the run was ruined."""
    parent = final.parent
    payload = json.dumps(dict(meta), indent=2).encode()
    write_file(tmp / META_FILE, lambda f: f.write(payload))
    fsync_path(tmp)
    if final.exists():  # re-saving a step (e.g. right after resuming from it)
        final.rename(parent / f"{_TRASH_PREFIX}{final.name}")
    os.replace(tmp, final)
    fsync_path(parent)
    remove_leftovers(parent)
    if keep_last is not None:
        complete = complete_checkpoints(parent)
        healthy = last_healthy(complete, meta["step"]) if "health" in meta else None
        for old in complete[:-keep_last]:
            if old != healthy:
                shutil.rmtree(old)


def last_healthy(checkpoints: list[Path], before: int) -> Path | None:
    """The newest of ``checkpoints`` (oldest first) that was saved while the run was healthy, of a step
    below ``before`` and below the first step in doubt that any newer one records: a collapse shows
    only in the steps after the weights that caused it, which were saved as healthy. Saving passes
    its own step as ``before``, since no step has sampled the newest weights yet. A checkpoint saved
    before health was recorded counts as healthy; one whose ``meta.json`` is unreadable does not."""
    for path in reversed(checkpoints):
        try:
            meta = read_meta(path)
        except CheckpointError:
            continue
        health = meta.get("health", {"healthy": True})
        if not health["healthy"]:
            before = min(before, health["suspect_from"])
        elif meta["step"] < before:
            return path
    return None


def manifest(directory: Path, rank: int = 0, world_size: int = 1) -> dict[str, list]:
    """Size and sha256 of the files under ``directory`` but ``meta.json``: this rank's share of them
    (every ``world_size``-th by path), so that the ranks of a sharded save hash in parallel."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p != directory / META_FILE)
    return {
        p.relative_to(directory).as_posix(): [p.stat().st_size, _sha256(p)] for p in files[rank::world_size]
    }


def damage(path: Path, rank: int = 0, world_size: int = 1) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted, or None: ``meta.json`` missing or unreadable,
    a file of its manifest missing or of another size, or (this rank's share of them, as in
    :func:`manifest`) another sha256. A checkpoint saved before manifests existed has none to check."""
    if not (path / META_FILE).is_file():
        return f"{META_FILE} is missing"
    try:
        listed = sorted(read_meta(path).get(MANIFEST, {}).items())
    except CheckpointError as exc:
        return str(exc)
    for name, (size, _) in listed:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} holds {file.stat().st_size} bytes, {size} were written"
    for name, (_, digest) in listed[rank::world_size]:
        if _sha256(path / name) != digest:
            return f"{name} differs from what was written (sha256)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def remove_leftovers(checkpoints: Path) -> None:
    """Clean up after an interrupted save: drop temporary directories, and put back a checkpoint that
    was moved aside for a re-save of its step but never replaced; drop it once replaced."""
    for entry in checkpoints.iterdir():
        if entry.name.startswith(_TMP_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(_TRASH_PREFIX):
            original = checkpoints / entry.name[len(_TRASH_PREFIX) :]
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.rename(original)


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of a complete checkpoint, checked for the fields every format writes."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
        return {**meta, "step": int(meta["step"]), "files": [str(name) for name in meta["files"]]}
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"corrupt checkpoint metadata {meta_path}: {exc}") from exc


def write_file(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through ``write`` and fsync it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_torch(path: Path, obj: Any) -> None:
    write_file(path, lambda f: torch.save(obj, f))


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_torch(path: Path) -> Any:
    """A checkpoint file's tensors and plain values (never arbitrary pickled objects)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"save_checkpoint: {where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN_TYPES):
        raise TypeError(
            f"save_checkpoint: {where} is a {type(value).__name__}; extra state may only hold dicts, "
            "lists, tuples, str, int, float, bool, None and tensors (convert it, e.g. via state_dict())"
        )


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
