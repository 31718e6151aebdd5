"""Everything a run needs, built once: :class:`Run`, and :func:`setup` that builds or restores it."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import Progress
from transformers import PreTrainedTokenizerBase

from occ_fast.algorithm import LossConfig
from occ_fast.checkpointing.resume import (
    adopt_metrics,
    config_changes,
    load_any_checkpoint,
    resolve_resume,
    resume_note,
    set_peak_lr,
    write_config,
)
from occ_fast.config import Config, ConfigError
from occ_fast.data import PromptRecord, PromptSampler
from occ_fast.distributed.fsdp import shard_model
from occ_fast.distributed.process_group import DistInfo, barrier, init_distributed
from occ_fast.model import MTPModel
from occ_fast.monitoring.health import NonFiniteGuard, PolicyHealth, RewardHealth
from occ_fast.monitoring.metrics import MetricsLogger, read_metrics
from occ_fast.monitoring.output import ensure_writable
from occ_fast.monitoring.progress import progress_bars
from occ_fast.monitoring.throttle import ThrottledWarning
from occ_fast.rewards import RewardScorer
from occ_fast.rewards.answers import check_answers
from occ_fast.rollout import RolloutEngine
from occ_fast.training.build import (
    build_model,
    build_tokenizer,
    check_model,
    limit_prompt_length,
    model_dtype,
    resolve_device,
    train_records,
)
from occ_fast.training.engine import build_engine, check_rollout_engine
from occ_fast.training.master_weights import fp32_weights
from occ_fast.training.optim import build_optimizer, build_scheduler
from occ_fast.training.warm_start import sft_warm_start

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a step needs, built once by :func:`setup`."""

    cfg: Config
    dist: DistInfo
    sharded: bool  # FSDP2 under torchrun (a process group exists), even with one rank
    device: torch.device
    tokenizer: PreTrainedTokenizerBase
    model: MTPModel
    engine: RolloutEngine
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    records: list[PromptRecord]
    sampler: PromptSampler
    scorer: RewardScorer
    loss_cfg: LossConfig
    metrics: MetricsLogger | None  # rank 0 only
    progress: Progress
    autocast_dtype: torch.dtype | None
    start_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    nonfinite: NonFiniteGuard = field(default_factory=lambda: NonFiniteGuard(limit=0))
    health: PolicyHealth = field(default_factory=lambda: PolicyHealth(0, math.inf, False))
    reward_health: RewardHealth = field(default_factory=lambda: RewardHealth("", 1.0, 1))
    shortfall_warning: ThrottledWarning = field(
        default_factory=lambda: ThrottledWarning(logging.getLogger("occ_fast.training.groups"))
    )


def setup(cfg: Config, console: Console) -> Run:
    """Build (or restore) everything a run needs. Under torchrun: join the process group, build the
    same model on every rank (same seed), warm-start it, then shard it with FSDP2 before the
    optimizer exists; each rank then samples its rollouts from its own RNG stream."""
    device = resolve_device(cfg)
    check_rollout_engine(cfg)  # before the heavy work: what the installed vLLM cannot run
    info = init_distributed(device_type=device.type)
    sharded = dist.is_initialized()
    if sharded:
        device = info.device
        check_world_size(cfg, info.world_size)
    if not info.is_main:
        logging.getLogger("occ_fast").setLevel(logging.WARNING)  # rank 0 alone logs at info level
    run_dir = cfg.run_dir
    checkpoint = resolve_resume(cfg)
    saved_config = checkpoint.parent.parent / "config.yaml" if checkpoint is not None else None
    changes = config_changes(saved_config, cfg) if saved_config is not None and saved_config.is_file() else []
    barrier()  # every rank has looked at the run directory before rank 0 writes into it
    records = train_records(cfg)  # bad data fails here, before the model is built
    check_answers(cfg.reward.fn, records)
    check_model(cfg)  # a Hub id, a data directory: one line, before the heavy work
    if info.is_main:
        ensure_writable(run_dir)
    scorer = RewardScorer(cfg.reward.fn, num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s)
    torch.manual_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg)
    records = limit_prompt_length(cfg, records, tokenizer, warn=info.is_main)
    mixed_precision = sharded and model_dtype(cfg, device) == torch.bfloat16
    model = build_model(cfg, tokenizer, device, dtype=torch.float32 if mixed_precision else None)
    sampler = PromptSampler(len(records), seed=cfg.data.seed)
    progress = progress_bars(console, disable=not info.is_main)
    autocast = torch.bfloat16 if cfg.train.bf16_autocast and device.type == "cuda" else None
    if checkpoint is None:
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_config(run_dir, cfg, None, None)
        logger.info("run directory: %s", run_dir)
        if cfg.train.warmup_sft_steps:  # every rank alike: the weights must agree before sharding
            sft_warm_start(cfg, model, tokenizer, progress)
    replica = None
    if sharded and cfg.rollout.engine == "transformers":
        # Generation cannot run through FSDP (ranks finish decoding at different steps, and every
        # sharded forward is a collective): each rank samples from a full copy, synced every step.
        replica = copy.deepcopy(model.base).to(torch.bfloat16 if mixed_precision else model.base.dtype)
        replica.requires_grad_(False)
    if sharded:
        shard_model(model, mixed_precision=mixed_precision)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=cfg.train.steps)
    start_step = 0
    if checkpoint is not None:
        with fp32_weights(optimizer):  # a bf16 run's checkpoint holds its fp32 masters
            state = load_any_checkpoint(checkpoint, model, optimizer, scheduler, sharded=sharded)
        sampler.load_state_dict(state.extra["sampler"])
        start_step = int(state.extra["next_step"])
        if any(change.startswith("optim.lr ") for change in changes):
            set_peak_lr(optimizer, scheduler, cfg.optim.lr)
        if info.is_main:
            adopt_metrics(checkpoint.parent.parent, run_dir)
            write_config(run_dir, cfg, saved_config, resume_note(checkpoint, start_step, changes))
        logger.info("resumed from %s: continuing at step %d", checkpoint, start_step)
    elif info.rank > 0:
        torch.manual_seed(cfg.train.seed + info.rank)  # rank 0 keeps the single-process stream
    metrics = None
    if info.is_main:
        metrics = MetricsLogger(
            run_dir,
            tensorboard=cfg.run.tensorboard,
            wandb=cfg.run.wandb,
            wandb_project=cfg.run.wandb_project,
            wandb_run_name=cfg.run.name,
            config=cfg.to_dict(),
            resume_step=start_step - 1 if checkpoint is not None else None,
        )
    history = read_metrics(metrics.path) if metrics is not None and checkpoint is not None else []
    return Run(
        cfg=cfg,
        dist=info,
        sharded=sharded,
        device=device,
        tokenizer=tokenizer,
        model=model,
        engine=build_engine(cfg, model, tokenizer, replica=replica, sharded=sharded),
        optimizer=optimizer,
        scheduler=scheduler,
        records=records,
        sampler=sampler,
        scorer=scorer,
        loss_cfg=cfg.to_loss_config(),
        metrics=metrics,
        progress=progress,
        autocast_dtype=autocast,
        start_step=start_step,
        history=history,  # a resumed run's summary covers the whole run
        nonfinite=NonFiniteGuard(limit=cfg.optim.max_nonfinite_updates),
        health=PolicyHealth.for_run(cfg.optim, checkpoint),  # a resumed run goes on judging as before
        reward_health=RewardHealth(cfg.reward.fn, cfg.reward.max_error_rate, cfg.reward.error_patience),
    )


def check_world_size(cfg: Config, world_size: int) -> None:
    """What the config needs of a data-parallel run, known only once torchrun has started."""
    prompts, minis = cfg.data.prompts_per_step, cfg.optim.mini_batches
    if prompts % (world_size * minis):
        raise ConfigError(
            f"data.prompts_per_step={prompts} must be a multiple of WORLD_SIZE x optim.mini_batches = "
            f"{world_size} x {minis}: every rank trains on the same number of whole groups per mini-batch"
        )
    if cfg.mtp.exact_every:
        raise ConfigError(
            "mtp.exact_every (exact-gradient diagnostics) runs in a single process: launch without torchrun"
        )
