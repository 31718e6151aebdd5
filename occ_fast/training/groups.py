"""Stages 1-3 of the RL step: sample prompts, roll out ``rollout.n`` completions of each, score them.

With dynamic sampling, groups whose rewards have no variance are dropped and refilled by further
rounds, as are groups with NaN or infinite rollout log-probs when ``rollout.on_nonfinite_logprobs``
is 'drop'; under torchrun each rank keeps exactly its share of the step's groups."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from occ_fast.algorithm import overlong_penalty, zero_variance_groups
from occ_fast.data import PromptRecord
from occ_fast.distributed.collectives import all_gather_ints, global_sum
from occ_fast.distributed.data_parallel import shard_prompts
from occ_fast.monitoring.health import TrainingHalted, last_good
from occ_fast.prompts import encode_prompt
from occ_fast.rollout import RolloutResult, SamplingParams
from occ_fast.training.setup import Run


@dataclass
class Group:
    record: PromptRecord
    results: list[RolloutResult]
    rewards: list[float]
    draw: int = 0  # the prompt's index among the step's draws over every rank and round


def collect_groups(run: Run, step: int) -> tuple[list[Group], dict[str, float]]:
    """This rank's groups for the step: its share (:func:`shard_prompts`) of ``data.prompts_per_step``.

    Every rank draws the same prompt indices from its own copy of the sampler and takes its slice,
    so the samplers stay identical (rank 0's is checkpointed). With dynamic sampling, each refill
    round draws the total of every rank's shortfall and hands each rank exactly its own; so do the
    rounds that refill the groups ``rollout.on_nonfinite_logprobs='drop'`` drops. The kept groups
    come back in draw order (:attr:`Group.draw`), which does not depend on the rank split."""
    cfg, rank, world = run.cfg, run.dist.rank, run.dist.world_size
    drop = cfg.rollout.on_nonfinite_logprobs == "drop"
    quota = len(shard_prompts(range(cfg.data.prompts_per_step), rank, world))
    kept: list[Group] = []
    stats = defaultdict(float)
    rounds = drawn_before = 0
    while True:
        shortfalls = all_gather_ints(quota - len(kept))
        if sum(shortfalls) == 0 or rounds >= max(cfg.algorithm.dynamic_sampling_max_rounds, 1):
            break  # short after the last round only when dropped groups were not refilled
        rounds += 1
        drawn = run.sampler.next_batch(sum(shortfalls))
        start = sum(shortfalls[:rank])
        records = [run.records[i] for i in drawn[start : start + shortfalls[rank]]]
        groups, round_stats = rollout_and_score(run, records, step) if records else ([], {})
        for j, group in enumerate(groups):
            group.draw = drawn_before + start + j
        drawn_before += sum(shortfalls)
        for key, value in round_stats.items():
            stats[key] += value
        if drop:
            finite = [g for g in groups if all(torch.isfinite(r.logprobs).all() for r in g.results)]
            stats["dropped_groups"] += len(groups) - len(finite)
            groups = finite
        if not cfg.algorithm.dynamic_sampling:
            kept += groups  # a further round only refills dropped groups
            continue
        flat = torch.tensor([r for g in groups for r in g.rewards])
        zero = zero_variance_groups(flat, cfg.rollout.n).tolist() if groups else []
        kept += [g for g, z in zip(groups, zero) if not z]
        if rounds >= cfg.algorithm.dynamic_sampling_max_rounds and len(kept) < quota:
            run.shortfall_warning(
                "step %d: dynamic sampling kept %d of %d groups after %d rounds; training on all "
                "sampled; reward/zero_std_groups counts each step's zero-variance groups",
                step, len(kept), quota, rounds,
            )  # fmt: skip
            kept += [g for g, z in zip(groups, zero) if z][: quota - len(kept)]
    if drop:
        check_refilled(run, sum(shortfalls), step, rounds)
    else:
        check_rollout_logprobs(run, stats, step)
    kept.sort(key=lambda g: g.draw)
    all_rewards = [r for g in kept for r in g.rewards]
    return kept, {
        "reward/mean": sum(all_rewards) / len(all_rewards),
        "reward/accuracy": sum(r > 0 for r in all_rewards) / len(all_rewards),
        "reward/timeouts": stats["timeouts"],
        "reward/errors": stats["errors"],
        "reward/error_rate": (stats["errors"] + stats["timeouts"]) / max(stats["scored"], 1.0),
        "rollout/empty_completions": stats["empty"],
        "rollout/truncated": stats["truncated"],
        "rollout/rounds": rounds,
        "rollout/nonfinite_logprobs": stats["nonfinite_logprobs"],
        "rollout/dropped_groups": stats["dropped_groups"],
    }


def check_rollout_logprobs(run: Run, stats: dict[str, float], step: int) -> None:
    """Stop at a step whose rollout log-probs hold a NaN or an infinity, on every rank at once (the
    count is summed over ranks): trained on, they make the importance weights and the mismatch
    metrics null without a word. Ruined weights show here first (their samples are NaN before any
    update is), so the stop names the last checkpoint saved while the run was healthy."""
    bad, total = global_sum(torch.tensor([stats["nonfinite_logprobs"], stats["logprobs"]])).long().tolist()
    if bad:
        halt(run, step, f"{bad} of {total} rollout log-probs are NaN or infinite")


def check_refilled(run: Run, short: int, step: int, rounds: int) -> None:
    """Stop a step that ``rollout.on_nonfinite_logprobs='drop'`` left short of groups (``short``,
    summed over ranks, is the same on every rank): every round brought NaN or infinite log-probs."""
    if short:
        halt(
            run,
            step,
            f"after {rounds} rounds {short} groups were still dropped for NaN or infinite rollout log-probs "
            "(rollout.on_nonfinite_logprobs='drop')",
        )


def halt(run: Run, step: int, what: str) -> None:
    before = step if run.health.suspect_from is None else min(step, run.health.suspect_from)
    raise TrainingHalted(
        f"stopping at step {step}: {what} (the policy's weights or the engine's sampling are broken), "
        f"and nothing of this step was trained on; {last_good(run.cfg.run_dir, before)}"
    )


def rollout_and_score(
    run: Run, records: list[PromptRecord], step: int
) -> tuple[list[Group], dict[str, float]]:
    cfg, tok = run.cfg, run.tokenizer
    params = SamplingParams(
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=cfg.rollout.top_k,
        n=cfg.rollout.n,
        eos_token_ids=(tok.eos_token_id,),
    )
    task = run.progress.add_task(f"step {step}: rollouts", total=len(records) * cfg.rollout.n)
    results = run.engine.generate(
        [encode_prompt(tok, r) for r in records],
        params,
        progress=lambda done, total: run.progress.update(task, completed=done),
    )
    run.progress.remove_task(task)
    texts = [tok.decode(r.content_ids) for r in results]
    truths = [records[r.prompt_index].answer for r in results]
    scored = run.scorer.score(texts, truths)
    run.reward_health.record(scored.errors, len(texts))
    rewards = torch.tensor(scored.rewards, dtype=torch.float32)
    if cfg.reward.overlong_penalty:
        lengths = [len(r.token_ids) for r in results]
        penalty = overlong_penalty(lengths, cfg.rollout.max_new_tokens, cfg.algorithm.overlong_buffer)
        rewards = rewards + cfg.algorithm.overlong_penalty_factor * penalty
    n = cfg.rollout.n
    groups = [
        Group(record, results[i * n : (i + 1) * n], rewards[i * n : (i + 1) * n].tolist())
        for i, record in enumerate(records)
    ]
    return groups, {
        "timeouts": scored.num_timeouts,
        "errors": scored.num_errors,
        "scored": len(texts),
        "empty": sum(not r.content_ids for r in results),
        "truncated": sum(r.finish_reason == "length" for r in results),
        "logprobs": sum(r.logprobs.numel() for r in results),
        "nonfinite_logprobs": sum(int((~torch.isfinite(r.logprobs)).sum()) for r in results),
    }
