"""Resuming a run: which checkpoint (:func:`resolve_resume`), loading it whatever its kind
(:func:`load_any_checkpoint`), and a changed configuration against the run's saved ``config.yaml``.

Changes the checkpoint cannot honour are refused, all listed at once: the model (its weights have
the old shape), the training data (the sampler's position indexes it), what only the start used
(seeds, the warm-start), optimizer settings its saved state carries (betas, eps, weight decay), and
the MTP regime unless ``run.allow_regime_change``. Everything else applies from the resumed step on:
steps, logging, checkpoints, evaluation, loss and rollout settings, the schedule's shape, and
``optim.lr`` by this rule: the new value replaces the peak, and the warm-up/cosine multiplier of
the resumed step applies to it as before (no new warm-up). The new ``config.yaml`` holds the values
in force, followed by one comment line per resume naming its checkpoint, step and changes.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from occ_fast.checkpointing.files import (
    CHECKPOINTS_SUBDIR,
    CheckpointError,
    damage,
    find_latest,
    read_meta,
    step_dirs,
)
from occ_fast.checkpointing.sharded import (
    all_ranks,
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    process_rank,
)
from occ_fast.checkpointing.single_process import load_checkpoint
from occ_fast.config import Config, ConfigError
from occ_fast.model import MTPModel
from occ_fast.monitoring.output import write_text_atomic

logger = logging.getLogger(__name__)

RESUME_NOTE = "# resumed from "
# Not part of what a run is: where it lives and how this invocation found it.
IGNORED = frozenset({"preset", "run.name", "run.output_dir", "run.resume", "run.allow_regime_change"})
FIXED: dict[str, str] = {  # key or section prefix -> why it cannot change mid-run
    "model.": "the checkpoint's weights are of that model",
    "data.": "the sampler's position indexes that data",
    "train.seed": "used when the run started",
    "train.warmup_sft_steps": "used when the run started",
    "train.sft_": "used when the run started",
    "optim.betas": "the optimizer's saved state carries it",
    "optim.eps": "the optimizer's saved state carries it",
    "optim.weight_decay": "the optimizer's saved state carries it",
}
CHANGEABLE = frozenset({"data.prompts_per_step"})  # in a fixed section, but per-step only


class NothingToTrain(Exception):
    """The checkpoint to resume already trained ``train.steps`` steps: nothing to do (exit 0, so that a
    requeued job script that resumes a finished run succeeds)."""


def resolve_resume(cfg: Config) -> Path | None:
    """The checkpoint to resume from: ``run.resume`` = ``auto`` (the newest intact one in the run dir;
    none: a new run, said in one line), ``must`` (the same, but no run is refused) or a path.

    A run directory counts as a run once it has logged a step or saved a checkpoint: one left by a
    run that failed at start (or was stopped before its first step) is simply started again. A
    checkpoint is checked against its manifest first (:func:`damage`): ``auto`` and ``must`` pass
    over damaged ones, named in one line with why; a damaged path is refused. ``train.steps`` below
    the checkpoint's steps is refused; equal to them raises :class:`NothingToTrain` once the run has
    exported ``model/`` (until then the resume trains nothing and finishes the export a kill cut off)."""
    saved = step_dirs(cfg.run_dir / CHECKPOINTS_SUBDIR)
    metrics = cfg.run_dir / "metrics.jsonl"
    trained = bool(saved) or (metrics.is_file() and metrics.stat().st_size > 0)
    if cfg.run.resume is None:
        if trained:
            raise ConfigError(
                f"{cfg.run_dir} already holds a run: pass --run.resume auto to continue it, or a new --run.name"
            )
        return None
    if cfg.run.resume in ("auto", "must"):
        if not trained:
            return _no_run(cfg)
        if not saved:
            raise ConfigError(
                f"{cfg.run_dir} has metrics but no checkpoint to resume from (it stopped before its first "
                f"save): start again under a new --run.name, or delete {cfg.run_dir} and rerun this command"
            )
        checkpoint, damaged = _newest_intact(reversed(saved))
        if checkpoint is None:
            raise CheckpointError(
                f"no intact checkpoint to resume: {'; '.join(damaged)}; start again under a new --run.name"
            )
        if damaged and process_rank() == 0:
            logger.warning("%s: resuming from the newest intact one, %s", "; ".join(damaged), checkpoint)
    else:
        checkpoint = Path(cfg.run.resume)
        if not checkpoint.is_dir():
            raise ConfigError(f"run.resume: checkpoint directory not found: {checkpoint}")
        why = _damage(checkpoint)
        if why is not None:
            others = [p for p in reversed(step_dirs(checkpoint.parent)) if p.name != checkpoint.name]
            intact = _newest_intact(others)[0]
            there = f"; the newest intact one there is {intact}" if intact else ""
            raise CheckpointError(f"checkpoint {checkpoint} is damaged ({why}){there}")
    done = read_meta(checkpoint)["step"] + 1  # steps count from 0
    if cfg.train.steps < done:
        raise ConfigError(
            f"--train.steps {cfg.train.steps} is below the {done} steps {checkpoint} already trained: "
            f"pass --train.steps {done + 1} or more to continue the run"
        )
    if cfg.train.steps == done and (cfg.run_dir / "model").is_dir():
        raise NothingToTrain(
            f"nothing to train: {checkpoint} already trained {done} steps (--train.steps {done}); "
            "pass a larger --train.steps to continue the run"
        )
    return checkpoint


def _no_run(cfg: Config) -> None:
    """``auto`` of a name with no run starts one, said in one line (else a mistyped name starts from
    scratch unnoticed); ``must`` refuses, naming the runs there that have a checkpoint, closest first."""
    out = Path(cfg.run.output_dir)
    if cfg.run.resume == "auto":
        if process_rank() == 0:
            logger.warning(
                "no run %r in %s to resume: starting a new run (--run.resume must would refuse)",
                cfg.run.name,
                out,
            )
        return None
    runs = [d.name for d in out.iterdir() if find_latest(d)] if out.is_dir() else []
    shown = difflib.get_close_matches(cfg.run.name, runs, n=10, cutoff=0)
    more = f" and {len(runs) - len(shown)} more" if len(runs) > len(shown) else ""
    raise ConfigError(
        f"--run.resume must: no run {cfg.run.name!r} in {out} (runs there: {', '.join(shown) or 'none'}{more})"
    )


def _newest_intact(newest_first: Iterable[Path]) -> tuple[Path | None, list[str]]:
    """The first intact checkpoint of ``newest_first`` (None if none is), and what was wrong with
    each one before it."""
    damaged = []
    for path in newest_first:
        why = _damage(path)
        if why is None:
            return path, damaged
        damaged.append(f"damaged checkpoint {path} ({why})")
    return None, damaged


def _damage(path: Path) -> str | None:
    """:func:`damage` with each rank hashing its share of the files, as fast as the ranks' load would
    read them; every rank gets the same answer, so all resume the same checkpoint."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return next(filter(None, all_ranks(damage(path, rank, world))), None)


def load_any_checkpoint(
    path: Path, model: MTPModel, optimizer: torch.optim.Optimizer, scheduler, *, sharded: bool
):
    """A sharded (DCP) checkpoint loads at any world size, a single-process one in a single process."""
    if is_sharded_checkpoint(path):
        return load_sharded_checkpoint(path, model, optimizer, scheduler)
    if sharded:
        raise CheckpointError(
            f"{path} was written by a single-process run: resume it without torchrun (its next "
            "checkpoint is then single-process too), or start a new run from its exported model"
        )
    return load_checkpoint(path, model, optimizer, scheduler)


def config_changes(saved_path: Path, requested: Config) -> list[str]:
    """``"key old -> new"`` for each change from the saved config that applies; raise
    :class:`ConfigError` listing every change that cannot."""
    saved = _flatten(Config.from_yaml(saved_path).to_dict())
    wanted = _flatten(requested.to_dict())
    applied, refused = [], []
    for key, new in wanted.items():
        old = saved.get(key, new)
        if key in IGNORED or old == new:
            continue
        why = _why_fixed(key, old, new, requested)
        if why:
            refused.append(f"{key}: {old} -> {new} ({why})")
        else:
            applied.append(f"{key} {old} -> {new}")
    if refused:
        raise ConfigError(
            f"cannot resume with these changes to {saved_path}:\n  - "
            + "\n  - ".join(refused)
            + "\ndrop them to continue this run, or start a new run (a new --run.name) with them"
        )
    return applied


def _why_fixed(key: str, old: Any, new: Any, requested: Config) -> str | None:
    if key == "mtp.regime":
        if "none" in (old, new):
            return "the MTP heads exist only with a regime other than 'none'"
        if not requested.run.allow_regime_change:
            return "pass --run.allow-regime-change to switch regimes mid-run"
        return None
    if key in CHANGEABLE:
        return None
    return next((why for prefix, why in FIXED.items() if key.startswith(prefix)), None)


def write_config(run_dir: Path, cfg: Config, saved_path: Path | None, note: str | None) -> None:
    """``run_dir/config.yaml``: ``cfg`` as a preset (``run.resume`` cleared), then the resume notes
    of ``saved_path`` and ``note``."""
    notes = []
    if saved_path is not None and saved_path.is_file():
        notes = [line for line in saved_path.read_text().splitlines() if line.startswith(RESUME_NOTE)]
    if note:
        notes.append(note)
    text = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=None)).to_yaml()
    write_text_atomic(run_dir / "config.yaml", text + "".join(f"{line}\n" for line in notes))


def resume_note(checkpoint: Path, step: int, changes: list[str]) -> str:
    return f"{RESUME_NOTE}{checkpoint} at step {step}" + (f": {', '.join(changes)}" if changes else "")


def adopt_metrics(source_run: Path, run_dir: Path) -> None:
    """Resuming another run's checkpoint into a new run directory: bring its metrics along, so that
    the new directory holds the whole run (the resume then truncates them to the checkpoint)."""
    source = source_run / "metrics.jsonl"
    target = run_dir / "metrics.jsonl"
    if source.is_file() and not target.exists() and source_run.resolve() != run_dir.resolve():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def set_peak_lr(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float
) -> None:
    """Make ``lr`` the schedule's peak from the scheduler's current position on (the rule above)."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out
