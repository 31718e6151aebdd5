"""One RL step, top to bottom: prompts -> rollouts -> rewards -> advantages -> old log-probs ->
updates -> weight sync -> metrics. Each stage is one call into its own module."""

from __future__ import annotations

import time

import torch

from occ_fast.algorithm import grpo_advantages
from occ_fast.algorithm.rollout_mismatch import MISMATCH_MAXIMA, MISMATCH_MINIMA
from occ_fast.distributed.collectives import gather_metrics
from occ_fast.distributed.data_parallel import global_positions
from occ_fast.distributed.fsdp import weights_norm
from occ_fast.monitoring.diagnostics import exact_gradient_stats
from occ_fast.policy.batching import Sample
from occ_fast.rollout import RolloutEngine
from occ_fast.training.groups import collect_groups
from occ_fast.training.master_weights import fp32_weights
from occ_fast.training.setup import Run
from occ_fast.training.update import (
    mini_batches,
    mtp_row_counts,
    normaliser,
    old_main_logprobs,
    response_tokens,
    update_mini_batch,
)
from occ_fast.training.update_stats import UpdateStats

# How a step's per-rank metrics combine over data-parallel ranks (the rest: mean over ranks).
SUMMED_METRICS = frozenset(
    {
        "reward/timeouts",
        "reward/errors",
        "rollout/empty_completions",
        "rollout/truncated",
        "reward/zero_std_groups",
        "rollout/dropped_groups",
        "rollout/nonfinite_logprobs",
        "optim/padding_micro_batches",
    }
)


def rl_step(run: Run, step: int) -> dict[str, float]:
    """One RL step: prompts -> rollouts -> rewards -> advantages -> old log-probs -> updates -> sync.

    Data parallel (torchrun): each rank rolls out and trains on its own share of the step's groups;
    the loss divides by the global token count, FSDP2 sums the gradients, and every rank runs the
    same number of micro-batches (padding ones contribute zero)."""
    cfg, timings = run.cfg, {}
    t0 = time.perf_counter()

    # 1-3. Sample prompts, roll out n completions each, score them (refilling zero-variance groups
    # when dynamic sampling is on).
    groups, reward_stats = collect_groups(run, step)
    timings["time/rollout_and_reward_s"] = time.perf_counter() - t0

    # 4. Group-normalised advantages, one per completion (a group never spans ranks).
    rewards = torch.tensor([r for group in groups for r in group.rewards])
    advantages = grpo_advantages(rewards, cfg.rollout.n)
    samples = [
        Sample(result.prompt_token_ids, result.token_ids, result.logprobs, float(adv))
        for result, adv in zip((r for group in groups for r in group.results), advantages.advantages)
    ]

    # 5. Mini-batches of whole groups, each split into micro-batches; old log-probs before any update.
    # The first mini-batch's come free from its own training forward (None here): its weights are
    # still the rollout weights. Exact diagnostics on a lone mini-batch need them before that forward.
    t1 = time.perf_counter()
    positions = global_positions([group.draw for group in groups])
    minis = mini_batches(run, samples, [p % cfg.optim.mini_batches for p in positions])
    diagnose = bool(cfg.mtp.exact_every) and step % cfg.mtp.exact_every == 0
    old_logprobs = [
        [old_main_logprobs(run, micro) for micro, _ in micros]
        if i > 0 or (diagnose and len(minis) == 1)
        else None
        for i, (_, micros) in enumerate(minis)
    ]
    timings["time/old_logprobs_s"] = time.perf_counter() - t1

    # 6. Policy updates: one optimizer step per mini-batch. How much they grew the weights' norm
    # bounds the update's size from below: the run's health judges it (optim.max_update_ratio).
    t2 = time.perf_counter()
    with fp32_weights(run.optimizer):  # a bf16 run's update shows on its fp32 masters
        norm_before = weights_norm(run.model)
    update, exact = UpdateStats(cfg.algorithm.mismatch_threshold), {}
    task = run.progress.add_task(f"step {step}: updates", total=sum(len(micros) for _, micros in minis))
    for i, ((mini_samples, micros), olds) in enumerate(zip(minis, old_logprobs)):
        if diagnose and i == len(minis) - 1:
            # Diagnostics: exact <g_RL, g_MTP> and ||g_MTP||^2 beside the proxy, on the last mini-batch
            # (on the first one the weights still equal the rollout weights and the proxy is 0).
            # Single-process only (checked in setup): every micro-batch here is a real one.
            exact = exact_gradient_stats(
                run.model,
                [micro for micro, _ in micros],
                olds,
                loss_cfg=run.loss_cfg,
                num_tokens=normaliser(response_tokens(mini_samples)),
                mtp_num_tokens=[normaliser(n) for n in mtp_row_counts(mini_samples, run.model.num_mtp)],
                temperature=cfg.rollout.temperature,
                max_response_length=cfg.rollout.max_new_tokens,
                autocast_dtype=run.autocast_dtype,
                optimizer=run.optimizer,
            )
        update_mini_batch(
            run, mini_samples, micros, olds, update, on_micro=lambda: run.progress.advance(task)
        )
    run.progress.remove_task(task)
    with fp32_weights(run.optimizer):
        update_ratio = (weights_norm(run.model) - norm_before) / norm_before
    run.nonfinite.observe(step, update.finite)
    run.scheduler.step()
    timings["time/update_s"] = time.perf_counter() - t2 - exact.get("exact/time_s", 0.0)

    # 7. The rollout engine samples from the new weights next step.
    run.engine.sync_weights(run.model)

    # 8. Metrics (the only host syncs of the step happen here), combined over ranks.
    timings["time/step_s"] = time.perf_counter() - t0
    return gather_metrics(
        {
            **reward_stats,
            **engine_stats(run.engine),
            "reward/zero_std_groups": advantages.num_zero_std,
            "response/length_mean": sum(len(s.response_ids) for s in samples) / len(samples),
            "optim/lr": run.scheduler.get_last_lr()[0],
            "optim/update_ratio": float(update_ratio),
            **update.summary(),
            **exact,
            **timings,
        },
        sums=SUMMED_METRICS | update.loss_keys,
        mins={"mtp/lam_min", *MISMATCH_MINIMA},
        maxs={"mtp/lam_max", *MISMATCH_MAXIMA},
        weights=update.token_weights(),
    )


def engine_stats(engine: RolloutEngine) -> dict[str, float]:
    """vLLM's speculative acceptance (MTP drafts; per draft position with more than one) and its
    weight-sync probes (trunk, drafter), when the engine has them."""
    stats = {f"rollout/spec_{k}": v for k, v in (getattr(engine, "last_spec_stats", None) or {}).items()}
    diff = getattr(engine, "last_sync_logprob_diff", None)
    if diff is not None:
        stats["rollout/sync_logprob_diff"] = diff
    for key, rate in (getattr(engine, "last_drafter_probe", None) or {}).items():
        stats[f"rollout/drafter_probe_{key}"] = rate  # acceptance on the probe: vLLM's and the replay's
    return stats
