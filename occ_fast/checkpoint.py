"""Atomic checkpoints of a training run, so a resumed run continues exactly where it stopped.

Layout: ``run_dir/checkpoints/step_000000042/`` holding ``model.safetensors``, ``optimizer.pt``,
``scheduler.pt``, ``rng.pt`` (python, numpy, torch CPU and CUDA generators), ``extra.pt`` (sampler
position, OCC state, anything else) and ``meta.json``. Everything is written into a hidden temporary
directory that is renamed into place only when complete, so a crash mid-save leaves the previous
checkpoints untouched and the half-written one invisible. Save from one process (rank 0) only.
"""

from __future__ import annotations

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
from safetensors.torch import load_model, save_model

CHECKPOINTS_SUBDIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
EXTRA_FILE = "extra.pt"
META_FILE = "meta.json"  # written last: its presence marks a complete checkpoint

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


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Write a checkpoint for ``step`` atomically and prune all but the newest ``keep_last``.

    ``model`` must be the unwrapped module (not DDP/FSDP). ``scheduler`` is anything with
    ``state_dict()``/``load_state_dict()``. ``extra`` may hold only dicts, lists, tuples, str, numbers,
    None and tensors, so that loading never needs to unpickle arbitrary objects.
    """
    if step < 0:
        raise ValueError(f"save_checkpoint: step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"save_checkpoint: keep_last must be >= 1 or None, got {keep_last}")
    extra = dict(extra or {})
    _check_plain(extra, "extra")

    final = checkpoint_dir(run_dir, step)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(parent)
    tmp = parent / f"{_TMP_PREFIX}{final.name}"
    tmp.mkdir()
    try:
        save_model(model, str(tmp / MODEL_FILE))
        _fsync_path(tmp / MODEL_FILE)
        files = [MODEL_FILE]
        if optimizer is not None:
            _write(tmp / OPTIMIZER_FILE, lambda f: torch.save(optimizer.state_dict(), f))
            files.append(OPTIMIZER_FILE)
        if scheduler is not None:
            _write(tmp / SCHEDULER_FILE, lambda f: torch.save(scheduler.state_dict(), f))
            files.append(SCHEDULER_FILE)
        _write(tmp / RNG_FILE, lambda f: torch.save(_capture_rng(), f))
        _write(tmp / EXTRA_FILE, lambda f: torch.save(extra, f))
        files += [RNG_FILE, EXTRA_FILE]
        meta = json.dumps({"step": step, "files": files}, indent=2).encode()
        _write(tmp / META_FILE, lambda f: f.write(meta))
        _fsync_path(tmp)
        if final.exists():  # re-saving a step (e.g. right after resuming from it)
            final.rename(parent / f"{_TRASH_PREFIX}{final.name}")
        os.replace(tmp, final)
        _fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_leftovers(parent)
    if keep_last is not None:
        for old in _complete_checkpoints(parent)[:-keep_last]:
            shutil.rmtree(old)
    return final


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None when it has none."""
    complete = _complete_checkpoints(Path(run_dir) / CHECKPOINTS_SUBDIR)
    return complete[-1] if complete else None


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    restore_rng: bool = True,
) -> LoadedCheckpoint:
    """Restore model, optimizer, scheduler and (by default) every RNG from the checkpoint at ``path``.

    Tensors load onto the devices of ``model``/``optimizer``. Leave ``optimizer``/``scheduler`` out
    to load weights only (evaluation); asking for one the checkpoint lacks is an error.
    """
    path = Path(path)
    meta = _read_meta(path)
    files = set(meta["files"])
    for name in files:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    try:
        load_model(model, str(path / MODEL_FILE), strict=True, device=_device_of(model))
    except Exception as exc:
        raise CheckpointError(f"cannot load model weights from {path / MODEL_FILE}: {exc}") from exc
    for obj, name in ((optimizer, OPTIMIZER_FILE), (scheduler, SCHEDULER_FILE)):
        if obj is None:
            continue
        if name not in files:
            raise CheckpointError(f"checkpoint {path} has no {name}, but one was asked to be restored")
        obj.load_state_dict(_torch_load(path / name))
    if restore_rng:
        _restore_rng(_torch_load(path / RNG_FILE))
    return LoadedCheckpoint(path=path, step=int(meta["step"]), extra=_torch_load(path / EXTRA_FILE))


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
        return {"step": int(meta["step"]), "files": [str(name) for name in meta["files"]]}
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"corrupt checkpoint metadata {meta_path}: {exc}") from exc


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete step directories, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = []
    for entry in checkpoints.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / META_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return [entry for _, entry in sorted(found)]


def _remove_leftovers(checkpoints: Path) -> None:
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


def _write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _device_of(model: torch.nn.Module) -> str:
    first = next(model.parameters(), None)
    return str(first.device) if first is not None else "cpu"


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


def _capture_rng() -> dict[str, Any]:
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


def _restore_rng(state: dict[str, Any]) -> None:
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
