"""Atomic checkpoints of a single-process training run, so a resumed run continues exactly where it
stopped.

Layout: ``run_dir/checkpoints/step_000000042/`` holding ``model.safetensors``, ``optimizer.pt``,
``scheduler.pt``, ``rng.pt`` (python, numpy, torch CPU and CUDA generators), ``extra.pt`` (sampler
position, OCC state, anything else) and ``meta.json`` (with every file's size and sha256). Everything
is written into a hidden temporary directory that is renamed into place only when complete
(:mod:`occ_fast.checkpointing.files`), so a crash mid-save leaves the previous checkpoints untouched
and the half-written one invisible.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from occ_fast.checkpointing.files import (
    EXTRA_FILE,
    MANIFEST,
    SCHEDULER_FILE,
    CheckpointError,
    LoadedCheckpoint,
    capture_rng_state,
    check_save_args,
    checkpoint_dir,
    fsync_path,
    load_torch,
    manifest,
    open_staging,
    publish,
    read_meta,
    restore_rng_state,
    save_torch,
)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = 3,
    health: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint for ``step`` atomically and prune all but the newest ``keep_last``.

    ``model`` must be the unwrapped module (not DDP/FSDP). ``scheduler`` is anything with
    ``state_dict()``/``load_state_dict()``. ``extra`` may hold only dicts, lists, tuples, str, numbers,
    None and tensors, so that loading never needs to unpickle arbitrary objects. ``health``, the run's
    judgement (:meth:`occ_fast.monitoring.health.PolicyHealth.record`), goes into ``meta.json``, and
    pruning then keeps the newest healthy checkpoint too (:func:`occ_fast.checkpointing.files.publish`).
    """
    extra = check_save_args(step, keep_last, extra)
    final = checkpoint_dir(run_dir, step)
    tmp = open_staging(final)
    try:
        save_model(model, str(tmp / MODEL_FILE))
        fsync_path(tmp / MODEL_FILE)
        files = [MODEL_FILE]
        for obj, name in ((optimizer, OPTIMIZER_FILE), (scheduler, SCHEDULER_FILE)):
            if obj is not None:
                save_torch(tmp / name, obj.state_dict())
                files.append(name)
        save_torch(tmp / RNG_FILE, capture_rng_state())
        save_torch(tmp / EXTRA_FILE, extra)
        meta = {"step": step, "files": [*files, RNG_FILE, EXTRA_FILE], MANIFEST: manifest(tmp)}
        publish(tmp, final, meta if health is None else {**meta, "health": dict(health)}, keep_last)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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
    meta = read_meta(path)
    if meta.get("format") is not None:
        raise CheckpointError(
            f"{path} is a {meta['format']} (sharded) checkpoint: load it with occ_fast.checkpointing.sharded"
        )
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
        obj.load_state_dict(load_torch(path / name))
    if restore_rng:
        restore_rng_state(load_torch(path / RNG_FILE))
    return LoadedCheckpoint(path=path, step=int(meta["step"]), extra=load_torch(path / EXTRA_FILE))


def _device_of(model: torch.nn.Module) -> str:
    first = next(model.parameters(), None)
    return str(first.device) if first is not None else "cpu"
