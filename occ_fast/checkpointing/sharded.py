"""Sharded checkpoints of an FSDP2 run (torch.distributed.checkpoint), and the Hugging Face export.

Same layout and atomicity as single-process checkpoints (:mod:`occ_fast.checkpointing.files`: written
into a hidden temporary directory that rank 0 renames into place once every rank has written, so
``find_latest`` finds both kinds), but the model and optimizer go through DCP: every rank writes its
own shards, in parallel, and a load reshards them to the reader's layout, so a run saved on N ranks
resumes on M (a single process without a process group included). ``meta.json`` says
``"format": "dcp"``.

Every rank calls every function here (they are collectives); the run directory must be on a file
system all ranks share.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from transformers import AutoModelForCausalLM

from occ_fast.checkpointing.files import (
    EXTRA_FILE,
    MANIFEST,
    SCHEDULER_FILE,
    CheckpointError,
    LoadedCheckpoint,
    capture_rng_state,
    check_save_args,
    checkpoint_dir,
    load_torch,
    manifest,
    open_staging,
    publish,
    read_meta,
    restore_rng_state,
    save_torch,
    staging_dir,
)
from occ_fast.model import MTPModel, save_mtp_model
from occ_fast.model.wrapper import new_mtp_layer

logger = logging.getLogger(__name__)

FORMAT = "dcp"
DCP_SUBDIR = "dcp"


def process_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_ranks(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (this process's alone without a process group)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def save_sharded_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = 3,
    health: Mapping[str, Any] | None = None,
) -> Path:
    """Write model + optimizer shards (DCP), scheduler, ``extra`` (rank 0's) and each rank's RNG
    for ``step``; rename into place on rank 0 after a barrier; prune all but ``keep_last`` (and, with
    ``health`` recorded in ``meta.json``, the newest healthy checkpoint: :func:`publish`)."""
    extra = check_save_args(step, keep_last, extra)
    rank, main = process_rank(), process_rank() == 0
    final = checkpoint_dir(run_dir, step)
    tmp = open_staging(final) if main else staging_dir(final)
    _barrier()  # the temporary directory exists before anyone writes into it
    try:
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.save(state, checkpoint_id=tmp / DCP_SUBDIR, no_dist=not dist.is_initialized())
        save_torch(tmp / _rng_file(rank), capture_rng_state())
        if main:
            files = [DCP_SUBDIR, EXTRA_FILE]
            if scheduler is not None:
                save_torch(tmp / SCHEDULER_FILE, scheduler.state_dict())
                files.append(SCHEDULER_FILE)
            save_torch(tmp / EXTRA_FILE, extra)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier()  # every rank's shards and RNG are on disk
    shares = all_ranks(manifest(tmp, rank, _world_size()))  # each rank hashes its share of the files
    if main:
        listed = {name: entry for share in shares for name, entry in share.items()}
        meta = {"step": step, "format": FORMAT, "world_size": _world_size(), "files": files, MANIFEST: listed}
        publish(tmp, final, meta if health is None else {**meta, "health": dict(health)}, keep_last)
    _barrier()  # nobody moves on (or reads it) before it is in place
    return final


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether the complete checkpoint at ``path`` was written by :func:`save_sharded_checkpoint`."""
    try:
        return read_meta(Path(path)).get("format") == FORMAT
    except CheckpointError:
        return False


def load_sharded_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    restore_rng: bool = True,
) -> LoadedCheckpoint:
    """Restore model (and optimizer, scheduler) from a sharded checkpoint, resharding to this run's
    world size and layout (FSDP2 or a plain module). Each rank's RNG comes back only when the world
    size is the one saved: other streams cannot be mapped onto a different number of ranks."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a sharded (DCP) checkpoint: load it with occ_fast.checkpointing.single_process"
        )
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=path / DCP_SUBDIR, no_dist=not dist.is_initialized())
    except (Exception, CheckpointException) as exc:  # DCP's own is a BaseException
        raise CheckpointError(f"cannot load sharded state from {path / DCP_SUBDIR}: {exc}") from exc
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    if scheduler is not None:
        if SCHEDULER_FILE not in meta["files"]:
            raise CheckpointError(
                f"checkpoint {path} has no {SCHEDULER_FILE}, but one was asked to be restored"
            )
        scheduler.load_state_dict(load_torch(path / SCHEDULER_FILE))
    if restore_rng:
        if meta["world_size"] == _world_size():
            restore_rng_state(load_torch(path / _rng_file(process_rank())))
        elif process_rank() == 0:
            logger.warning(
                "RNG state not restored: saved on %d rank(s), resumed on %d",
                meta["world_size"],
                _world_size(),
            )
    return LoadedCheckpoint(path=path, step=int(meta["step"]), extra=load_torch(path / EXTRA_FILE))


def export_hf(model: MTPModel, path: str | Path, tokenizer=None) -> None:
    """Write a Hugging Face directory (trunk + MTP heads, :func:`save_mtp_model`) from a sharded or
    plain model: full weights are gathered to rank 0's CPU, put into an unsharded copy built on the
    meta device (no second initialisation), and saved by rank 0."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if process_rank() == 0:
        with torch.device("meta"):
            base = AutoModelForCausalLM.from_config(model.base.config)
            layers = [new_mtp_layer(base) for _ in range(model.num_mtp)]
        copy = MTPModel(base, layers, naming=model.naming)
        copy.load_state_dict(full, strict=True, assign=True)
        if base.config.tie_word_embeddings:
            base.tie_weights()
        save_mtp_model(copy, path, tokenizer=tokenizer)
    _barrier()
