"""AdamW with the usual weight-decay split, and a warm-up + constant/cosine learning-rate schedule.

Weight decay pulls weights toward zero; that regularises matrices (linear layers, the MTP input
projection, an untied lm_head) but only distorts parameters whose scale *is* their meaning: norm
gains and biases (every parameter with fewer than 2 dimensions) and embedding tables (any
``nn.Embedding``, including an lm_head tied to one). Those get ``weight_decay = 0``.

The schedule is a ``LambdaLR`` so that it checkpoints through ``state_dict()``. The trainer steps it
once per RL step, so all mini-batches of one RL step share a learning rate (as verl does).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from occ_fast.config import OptimConfig
from occ_fast.training.master_weights import MasterAdamW, adamw

logger = logging.getLogger(__name__)


def decay_split(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """Trainable parameters by name: (decayed, not decayed). A shared (tied) parameter appears once."""
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            if param.ndim < 2 or isinstance(module, nn.Embedding):
                no_decay[full] = param
            else:
                decay[full] = param
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters; fused when they all live on CUDA (fewer launches).

    A model with plain 16-bit parameters gets fp32 master weights and fp32 AdamW state
    (:mod:`occ_fast.training.master_weights`): the optimizer's parameters are then the masters."""
    decay, no_decay = decay_split(model)
    if not decay and not no_decay:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    groups = [
        {"params": list(params.values()), "weight_decay": wd}
        for params, wd in ((decay, cfg.weight_decay), (no_decay, 0.0))
        if params
    ]
    fused = all(p.is_cuda for p in (*decay.values(), *no_decay.values()))
    optimizer = adamw(model, groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)
    logger.info(
        "AdamW: %d tensors with weight decay %g, %d without; %s implementation%s",
        len(decay),
        cfg.weight_decay,
        len(no_decay),
        "fused" if fused else "torch's default",
        f"; fp32 master weights and state for the {groups[0]['params'][0].dtype} model"
        if isinstance(optimizer, MasterAdamW)
        else "",
    )
    return optimizer


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for the update at ``step`` (0-based).

    Warm-up is linear, ``(step + 1) / warmup_steps``, so the very first update already moves
    (no update is spent at lr 0) and update ``warmup_steps - 1`` runs at the peak. Then ``constant``
    holds 1; ``cosine`` follows ``min + (1 - min) * (1 + cos(pi * p)) / 2`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)``, reaching ``min_lr_ratio`` at
    ``step = total_steps`` and staying there.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """Warm-up then constant/cosine over ``total_steps`` scheduler steps (``train.steps``).

    The schedule comes from ``cfg`` each time it is built; ``state_dict()`` carries only the position,
    so a resumed run follows the current config from the step it stopped at.
    """
    if total_steps < 1:
        raise ValueError(f"build_scheduler: total_steps must be >= 1, got {total_steps}")
    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {cfg.schedule!r}")

    def factor(step: int) -> float:
        return lr_factor(
            step,
            warmup_steps=cfg.warmup_steps,
            total_steps=total_steps,
            schedule=cfg.schedule,
            min_lr_ratio=cfg.min_lr_ratio,
        )

    return LambdaLR(optimizer, factor)
