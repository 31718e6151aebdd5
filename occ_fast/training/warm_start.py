"""Supervised warm-start on prompt/answer pairs, so that a fresh model's first rollouts earn reward.

Trains the main head and every MTP head with cross-entropy on the answer tokens (the MTP heads
learn to predict the same tokens two and more steps ahead, as in pretraining).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import torch
from rich.progress import Progress
from transformers import PreTrainedTokenizerBase

from occ_fast.config import Config, ConfigError
from occ_fast.data import PromptRecord
from occ_fast.model import MTPModel
from occ_fast.policy.batching import Sample, make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.prompts import encode_prompt
from occ_fast.training.build import synthetic_records
from occ_fast.training.master_weights import MasterAdamW, adamw
from occ_fast.training.optim import lr_factor

logger = logging.getLogger(__name__)


def supervised_samples(tokenizer: PreTrainedTokenizerBase, records: Sequence[PromptRecord]) -> list[Sample]:
    """Prompt followed by `` <reference completion><eos>`` as the response (the answer, or the worked solution)."""
    samples = []
    for record in records:
        answer = tokenizer(" " + record.reference_completion, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        samples.append(Sample(encode_prompt(tokenizer, record), answer, torch.zeros(len(answer)), 0.0))
    return samples


def warm_start(
    model: MTPModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    token_budget: int,
    warmup_steps: int = 0,
    schedule: str = "constant",
    betas: tuple[float, float] = (0.9, 0.999),
    on_step: Callable[[int, float], bool | None] | None = None,
) -> float:
    """Run ``steps`` AdamW steps of answer-token cross-entropy; return the last step's main-head loss.

    The learning rate warms up linearly over ``warmup_steps``, then holds ``lr`` or cosine-decays to 0
    at ``steps`` (the RL schedule's :func:`lr_factor`): a small model can stall at a constant rate
    (the ``addition`` preset's does). ``on_step(step, loss)`` returning True stops after that step (a
    warm start that ends once the model reaches a held-out accuracy, as
    ``occ_fast.experiments.headroom``'s does); the schedule stays the one planned for ``steps``.
    A bf16 model trains fp32 masters, as the RL update does (:mod:`occ_fast.training.master_weights`);
    it ends holding their rounding."""
    device = next(model.parameters()).device
    samples = supervised_samples(tokenizer, records)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(model, [{"params": trainable}], lr=lr, betas=betas, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, warmup_steps=warmup_steps, total_steps=steps, schedule=schedule, min_lr_ratio=0.0
        ),
    )
    rng = random.Random(seed)
    model.train()
    main_loss = float("nan")
    try:
        for step in range(steps):
            batch = rng.sample(samples, min(batch_size, len(samples)))
            num_tokens = sum(len(s.response_ids) for s in batch)
            optimizer.zero_grad(set_to_none=True)
            total_main = torch.zeros((), device=device)
            for micro in make_micro_batches(batch, token_budget=token_budget, pad_id=tokenizer.pad_token_id):
                out = policy_logprobs(model, micro.to(device), temperature=1.0)
                main = -out.heads[0].logprob.sum() / num_tokens
                mtp = sum(-h.logprob.sum() / num_tokens for h in out.heads[1:])
                (main + mtp).backward()
                total_main += main.detach()
            optimizer.step()
            scheduler.step()
            main_loss = float(total_main)
            if on_step is not None and on_step(step, main_loss):
                break
    finally:
        if isinstance(optimizer, MasterAdamW):
            optimizer.masters.release()  # the RL optimizer's own masters take over the model
    optimizer.zero_grad(set_to_none=True)
    return main_loss


def configured_warm_start(
    cfg: Config,
    model: MTPModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    on_step: Callable[[int, float], bool | None] | None = None,
) -> float:
    """:func:`warm_start` with ``cfg``'s SFT settings on the synthetic task's training problems, in one
    place: a run's warm start and ``occ_fast.experiments.headroom``'s (which stops early) are one SFT."""
    return warm_start(
        model,
        tokenizer,
        synthetic_records(cfg, "train", cfg.data.train_problems, "data.train_problems"),
        steps=cfg.train.warmup_sft_steps,
        lr=cfg.train.sft_lr,
        batch_size=cfg.train.sft_batch_size,
        seed=cfg.train.seed,
        token_budget=cfg.optim.micro_batch_tokens,
        warmup_steps=cfg.train.sft_warmup_steps,
        schedule=cfg.train.sft_schedule,
        betas=cfg.train.sft_betas,
        on_step=on_step,
    )


def sft_warm_start(
    cfg: Config, model: MTPModel, tokenizer: PreTrainedTokenizerBase, progress: Progress
) -> None:
    """The warm start a run's config asks for (``train.warmup_sft_steps``), with its progress bar.

    It always teaches the synthetic task (``data.digits``, ``data.ops``): its worked answers are whole
    completions, a file's answers are not. With ``data.source='file'`` (allowed for the tiny model,
    whose tokenizer is built from that task) RL then trains on the file's problems.
    """
    if cfg.data.source != "synthetic" and cfg.model.name_or_path is not None:
        raise ConfigError(
            "train.warmup_sft_steps with data.source='file' needs the tiny model (it teaches the synthetic task)"
        )
    with progress:
        task = progress.add_task("SFT warm-start", total=cfg.train.warmup_sft_steps)
        loss = configured_warm_start(
            cfg,
            model,
            tokenizer,
            on_step=lambda step, loss: progress.update(
                task, completed=step + 1, description=f"SFT loss {loss:.3f}"
            ),
        )
        progress.remove_task(task)
    logger.info("SFT warm-start: %d steps, final answer-token loss %.4f", cfg.train.warmup_sft_steps, loss)
