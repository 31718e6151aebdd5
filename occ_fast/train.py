"""GRPO/DAPO training with jointly trained MTP heads: ``python -m occ_fast.train [--preset NAME] [--field value ...]``.

With no arguments it runs the ``tiny`` preset on a laptop CPU: a small random model with one MTP
head is warm-started on synthetic arithmetic, then trained with GRPO and the OCC-calibrated MTP
term. :func:`rl_step` is one RL step, top to bottom; each stage is a call into its own module.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress
from transformers import PreTrainedTokenizerBase

from occ_fast import threads
from occ_fast.algorithm import (
    CoefficientLog,
    LossConfig,
    compute_loss,
    grpo_advantages,
    overlong_penalty,
    padded_response_entries,
    zero_variance_groups,
)
from occ_fast.algorithm.rollout_mismatch import (
    DEFAULT_MISMATCH_THRESHOLD,
    MISMATCH_MAXIMA,
    MISMATCH_MINIMA,
    MismatchLog,
)
from occ_fast.algorithm.sequences import sequence_index
from occ_fast.batching import MicroBatch, Sample, make_micro_batches
from occ_fast.build import (
    build_model,
    build_tokenizer,
    eval_records,
    limit_prompt_length,
    model_dtype,
    resolve_device,
    train_records,
)
from occ_fast.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    find_latest,
    load_checkpoint,
    save_checkpoint,
)
from occ_fast.config import Config, ConfigError, parse_config
from occ_fast.data import DatasetError, PromptRecord, PromptSampler
from occ_fast.diagnostics import exact_gradient_stats, proxy_exact_correlation
from occ_fast.distributed import (
    DistInfo,
    all_gather_ints,
    barrier,
    clip_grad_norm,
    gather_metrics,
    global_positions,
    global_sum,
    init_distributed,
    pad_micro_batches,
    shard_model,
    shard_prompts,
)
from occ_fast.evaluation import evaluate
from occ_fast.forward import policy_logprobs
from occ_fast.health import NonFiniteGuard, RewardHealth, TrainingHalted
from occ_fast.interrupt import GracefulStop, Interrupted, resume_command
from occ_fast.metrics import MetricsLogger, read_metrics
from occ_fast.model import MTPModel, save_mtp_model
from occ_fast.optim import build_optimizer, build_scheduler
from occ_fast.output import OutputError, checkpoint_write_error, ensure_writable
from occ_fast.progress import progress_bars
from occ_fast.prompts import encode_prompt
from occ_fast.resume import adopt_metrics, config_changes, resume_note, set_peak_lr, write_config
from occ_fast.rewards import RewardScorer
from occ_fast.rewards.answers import check_answers
from occ_fast.rewards.loader import RewardFnImportError
from occ_fast.rollout import RolloutEngine, RolloutResult, SamplingParams, TransformersEngine
from occ_fast.sft import warm_start
from occ_fast.sharded_checkpoint import (
    export_hf,
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from occ_fast.spec_forecast import draft_counts, forecast

logger = logging.getLogger("occ_fast")

PLOTS = {
    "reward": ["reward/mean", "reward/accuracy", "eval/avg_at_k"],
    "occ_lambda": ["mtp/lam", "mtp/lam_min", "mtp/lam_max", "mtp/lam_first_minibatch"],
    "occ_proxy": ["mtp/c_hat", "mtp/v2_hat"],
    "mtp_accuracy": ["mtp/accuracy"],
    "entropy": ["policy/entropy"],
    "occ_exact": ["exact/lam_star", "exact/lam_proxy"],
    "rollout_mismatch": [
        "mismatch/abs_diff_mean",
        "mismatch/kl_k1",
        "mismatch/kl_k3",
        "mismatch/frac_above_threshold",
    ],
}
# User errors found at start (bad data, reward function, checkpoint): one line, no traceback.
START_ERRORS = (DatasetError, RewardFnImportError, CheckpointError, OutputError)
RUN_STOPS = (TrainingHalted,)  # the run stopped itself (one line, exit status 1)
PLOT_YLABELS = {
    "reward": "reward / accuracy (share of samples)",
    "occ_lambda": "MTP coefficient lam",
    "mtp_accuracy": "MTP top-1 accuracy",
    "entropy": "entropy (nats)",
}
# How a step's per-rank metrics combine over data-parallel ranks (the rest: mean over ranks).
SUMMED_METRICS = frozenset(
    {
        "reward/timeouts",
        "reward/errors",
        "rollout/empty_completions",
        "rollout/truncated",
        "reward/zero_std_groups",
        "optim/padding_micro_batches",
    }
)


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
    reward_health: RewardHealth = field(default_factory=lambda: RewardHealth("", 1.0, 1))


@dataclass
class Summary:
    run_dir: Path
    steps: int
    reward_start: float
    reward_end: float
    final_lam: float | None
    eval_accuracy: float | None
    nan_skipped: int
    reward_failures: int = 0  # samples whose reward raised or timed out
    proxy_vs_exact: dict[str, float] = field(default_factory=dict)
    is_main: bool = True  # rank 0 (or a single process): the one that reports


def main(argv: Sequence[str] | None = None) -> int:
    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    try:
        cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as err:
        console.print(f"[bold red]invalid configuration[/]\n{err}", soft_wrap=True)
        return 2
    threads.apply()
    try:
        summary = train(cfg, console=console)
    except ConfigError as err:  # checks that need the process group (world size) or the run directory
        console.print(f"[bold red]invalid configuration[/]\n{err}", soft_wrap=True)
        return 2
    except START_ERRORS as err:
        console.print(f"[bold red]error[/] {err}", soft_wrap=True)
        return 2
    except RUN_STOPS as err:
        if os.environ.get("RANK", "0") == "0":
            console.print(f"[bold red]{err}[/]", soft_wrap=True)
        return 1
    except Interrupted as stop:
        if os.environ.get("RANK", "0") == "0":
            console.print(stop.message, soft_wrap=True)
        return stop.exit_code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not summary.is_main:
        return 0
    lam = "n/a" if summary.final_lam is None else f"{summary.final_lam:+.4f}"
    acc = "n/a" if summary.eval_accuracy is None else f"{summary.eval_accuracy:.3f}"
    console.print(
        f"[bold]done[/] {summary.steps} steps | reward {summary.reward_start:.3f} -> {summary.reward_end:.3f}"
        f" | final lam {lam} | held-out accuracy {acc} | NaN steps skipped {summary.nan_skipped}"
        f" | reward failures {summary.reward_failures}\n"
        f"run directory: {summary.run_dir}"
    )
    if summary.proxy_vs_exact:
        c = summary.proxy_vs_exact
        console.print(
            f"OCC proxy vs exact lam* over {c['exact/rows']} diagnosed steps: Pearson "
            f"{c['exact/proxy_pearson']:.3f}, sign agreement {c['exact/proxy_sign_agreement']:.3f}"
        )
    return 0


def train(cfg: Config, *, console: Console | None = None) -> Summary:
    """Run (or resume) training as configured; returns what the final report shows.

    Under torchrun every rank calls this; rank 0 alone writes metrics, plots and logs."""
    console = console or Console(stderr=True)
    with GracefulStop() as stop:
        run = setup(cfg, console)
        stop.deferred = True  # from here a signal lets the step finish, then saves it
        run_loop(run, stop)
        if run.metrics is not None:
            run.metrics.plot(PLOTS, PLOT_YLABELS)
            run.metrics.close()
        run.scorer.close()
        if run.sharded:  # gathered, written by rank 0
            export_hf(run.model, cfg.run_dir / "model", tokenizer=run.tokenizer)
        else:
            save_mtp_model(run.model, cfg.run_dir / "model", tokenizer=run.tokenizer)
    return summarize(run)


def run_loop(run: Run, stop: GracefulStop) -> None:
    """Steps from ``run.start_step`` to ``train.steps``, with logging, evaluation and checkpoints."""
    cfg, main_rank = run.cfg, run.dist.is_main
    with run.progress:
        steps = run.progress.add_task("RL steps", total=cfg.train.steps, completed=run.start_step)
        for step in range(run.start_step, cfg.train.steps):
            metrics = rl_step(run, step)
            if cfg.eval.every and ((step + 1) % cfg.eval.every == 0 or step + 1 == cfg.train.steps):
                metrics.update(run_eval(run, step))
            if run.metrics is not None:
                run.metrics.log(step, metrics)
            run.history.append(metrics)
            if main_rank and (
                (cfg.run.log_every and step % cfg.run.log_every == 0) or step + 1 == cfg.train.steps
            ):
                run.progress.console.print(step_line(step, metrics))
            run.nonfinite.check(cfg.run_dir)
            run.reward_health.end_step(step, metrics["reward/error_rate"])
            saved = (
                cfg.run.save_every and (step + 1) % cfg.run.save_every == 0
            ) or step + 1 == cfg.train.steps
            if saved:
                save(run, step)
            if run.metrics is not None and cfg.run.plot_every and (step + 1) % cfg.run.plot_every == 0:
                run.metrics.plot(PLOTS, PLOT_YLABELS)
            run.progress.advance(steps)
            signum = stop.agreed(run.device)
            if signum is not None and step + 1 < cfg.train.steps:  # after the last step: finish the run
                stop_after(run, step, signum, saved=saved)


def stop_after(run: Run, step: int, signum: int, *, saved: bool) -> None:
    """End the run on a signal once ``step`` is complete: checkpoint it, then raise :class:`Interrupted`."""
    if not saved:
        save(run, step)
    if run.metrics is not None:
        run.metrics.close()
    run.scorer.close()
    command = resume_command(run.cfg.run_dir / "config.yaml", run.dist.world_size)
    raise Interrupted(
        signum,
        f"interrupted ({signal.Signals(signum).name}) after step {step}: saved "
        f"{checkpoint_dir(run.cfg.run_dir, step)}; resume with: {command}",
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

    # 6. Policy updates: one optimizer step per mini-batch.
    t2 = time.perf_counter()
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
                autocast_dtype=run.autocast_dtype,
            )
        update_mini_batch(
            run, mini_samples, micros, olds, update, on_micro=lambda: run.progress.advance(task)
        )
    run.progress.remove_task(task)
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
            **update.summary(),
            **exact,
            **timings,
        },
        sums=SUMMED_METRICS | update.loss_keys,
        mins={"mtp/lam_min", *MISMATCH_MINIMA},
        maxs={"mtp/lam_max", *MISMATCH_MAXIMA},
    )


def engine_stats(engine: RolloutEngine) -> dict[str, float]:
    """vLLM's speculative acceptance (MTP drafts) and weight-sync probe, when the engine has them."""
    stats = {f"rollout/spec_{k}": v for k, v in (getattr(engine, "last_spec_stats", None) or {}).items()}
    diff = getattr(engine, "last_sync_logprob_diff", None)
    if diff is not None:
        stats["rollout/sync_logprob_diff"] = diff
    return stats


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
    round draws the total of every rank's shortfall and hands each rank exactly its own. The kept
    groups come back in draw order (:attr:`Group.draw`), which does not depend on the rank split."""
    cfg, rank, world = run.cfg, run.dist.rank, run.dist.world_size
    quota = len(shard_prompts(range(cfg.data.prompts_per_step), rank, world))
    kept: list[Group] = []
    stats = defaultdict(float)
    rounds = drawn_before = 0
    while True:
        shortfalls = all_gather_ints(quota - len(kept))
        if sum(shortfalls) == 0:
            break
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
        if not cfg.algorithm.dynamic_sampling:
            kept = groups
            break
        flat = torch.tensor([r for g in groups for r in g.rewards])
        zero = zero_variance_groups(flat, cfg.rollout.n).tolist() if groups else []
        kept += [g for g, z in zip(groups, zero) if not z]
        if rounds >= cfg.algorithm.dynamic_sampling_max_rounds:
            if len(kept) < quota:
                logger.warning(
                    "step %d: dynamic sampling kept %d of %d groups after %d rounds; training on all sampled",
                    step, len(kept), quota, rounds,
                )  # fmt: skip
                kept += [g for g, z in zip(groups, zero) if z][: quota - len(kept)]
            break
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
    }


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
    }


def mini_batches(
    run: Run, samples: list[Sample], chunks: list[int]
) -> list[tuple[list[Sample], list[tuple[MicroBatch, bool]]]]:
    """Split the step's samples into ``optim.mini_batches`` chunks of whole groups, group g going to
    chunk ``chunks[g]``, then into micro-batches, each flagged real or padding
    (:func:`pad_micro_batches`: equal counts on every rank).

    ``chunks[g]`` is the group's position in the step's draw order over all ranks, mod M, so that
    data parallelism does not change the algorithm: a rank's chunk i is exactly its share of the
    single-process chunk i, also when dynamic sampling refills groups in later rounds (a rank's
    groups are then not a contiguous block of the step's, and a chunk may be empty on one rank: it
    then only joins the other ranks' collectives, with padding micro-batches)."""
    cfg, n = run.cfg, run.cfg.rollout.n
    groups = [samples[j : j + n] for j in range(0, len(samples), n)]

    def micro_batches(chunk: list[Sample]) -> list[MicroBatch]:
        micros = make_micro_batches(
            chunk,
            token_budget=cfg.optim.micro_batch_tokens,
            batch_size=cfg.optim.micro_batch_size,
            pad_id=run.tokenizer.pad_token_id,
        )
        return [m.to(run.device) for m in micros]

    filler = micro_batches(groups[0])[0]
    out = []
    for i in range(cfg.optim.mini_batches):
        chunk = [s for group, c in zip(groups, chunks, strict=True) if c == i for s in group]
        out.append((chunk, pad_micro_batches(micro_batches(chunk) if chunk else [], filler)))
    return out


@torch.no_grad()
def old_main_logprobs(run: Run, micro: MicroBatch) -> torch.Tensor:
    """``lp_old``: the main head's log-probs under the weights that generated the rollouts."""
    out = policy_logprobs(
        run.model,
        micro,
        temperature=run.cfg.rollout.temperature,
        with_mtp=False,  # lp_old is the main head's alone (method.md section 3): skip the MTP depths
        autocast_dtype=run.autocast_dtype,
    )
    return out.heads[0].logprob


class UpdateStats:
    """Accumulates per-micro-batch loss metrics (device tensors) and turns them into numbers once."""

    def __init__(self, mismatch_threshold: float = DEFAULT_MISMATCH_THRESHOLD) -> None:
        self.sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        self.lams = CoefficientLog()
        self.mismatch = MismatchLog(mismatch_threshold)  # rollout engine vs trainer log-probs
        self.grad_norms: list[torch.Tensor] = []
        self.loss_keys: set[str] = set()  # token means over the global count: summed over ranks
        self.optimizer_steps = 0
        self.nan_skipped = 0
        self.bad_grad_norm = math.nan
        self.finite: list[bool] = []  # per optimizer update, in order: applied (True) or skipped
        self.padding_micro_batches = 0  # data parallel: forwards run only to keep ranks in step

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums[key].to(value.device) + value.detach().float()

    def summary(self) -> dict[str, float]:
        steps = max(self.optimizer_steps + self.nan_skipped, 1)
        tokens = float(self.sums.get("count/tokens", torch.ones(())))
        mtp_rows = float(self.sums.get("count/mtp_rows", torch.ones(())))
        out = {}
        for key, value in self.sums.items():
            if key.startswith("count/"):
                continue
            if key == "policy/entropy_sum":
                out["policy/entropy"] = float(value) / max(tokens, 1.0)
            elif key == "mtp/hits":
                out["mtp/accuracy"] = float(value) / max(mtp_rows, 1.0)
            else:
                out[key] = float(value) / steps  # token-normalised per mini-batch: average over them
        out |= self.lams.summary() | self.mismatch.summary()
        if self.grad_norms:
            out["optim/grad_norm"] = float(torch.stack([g.cpu() for g in self.grad_norms]).mean())
        elif self.nan_skipped:  # every update skipped: the norm that stopped them (metrics.jsonl: null)
            out["optim/grad_norm"] = self.bad_grad_norm
        out |= forecast(self.sums)
        out["optim/nan_skipped"] = self.nan_skipped
        out["optim/padding_micro_batches"] = self.padding_micro_batches
        return out


def response_tokens(samples: list[Sample]) -> float:
    """The main loss's token-mean normaliser: every response token of the mini-batch."""
    return float(sum(len(s.response_ids) for s in samples))


def mtp_row_counts(samples: list[Sample], depths: int) -> list[float]:
    """Each MTP depth's normaliser: the response tokens it has a row for."""
    return [float(sum(s.mtp_rows(k) for s in samples)) for k in range(1, depths + 1)]


def normaliser(count: float) -> float | torch.Tensor:
    """A token count as a loss normaliser: summed over data-parallel ranks, and at least 1 (a
    count of 0 means an all-zero loss term, which must not become 0/0)."""
    if dist.is_initialized():
        return global_sum(count).clamp(min=1.0)
    return max(count, 1.0)


def update_mini_batch(
    run: Run,
    samples: list[Sample],
    micros: list[tuple[MicroBatch, bool]],
    old_logprobs: list[torch.Tensor] | None,
    stats: UpdateStats,
    on_micro: Callable[[], None] | None = None,
) -> None:
    """Forward every micro-batch, backward its share of the mini-batch loss, then one optimizer step.

    ``old_logprobs`` None: the weights are the rollout weights, so ``lp_old`` is this forward's own
    main-head log-prob, detached (the ratio is exactly 1, OCC's ``d_rl`` exactly 0).
    The loss divides by the mini-batch's token counts over all ranks; a padding micro-batch (a
    repeat that only keeps FSDP's collectives in step) backpropagates zero and adds no metrics."""
    cfg, model = run.cfg, run.model
    num_tokens = normaliser(response_tokens(samples))
    mtp_tokens = [normaliser(n) for n in mtp_row_counts(samples, model.num_mtp)]
    real_micros = sum(real for _, real in micros)
    model.train()
    run.optimizer.zero_grad(set_to_none=True)
    for j, (micro, real) in enumerate(micros):
        out = policy_logprobs(
            model,
            micro,
            temperature=cfg.rollout.temperature,
            with_entropy=True,
            autocast_dtype=run.autocast_dtype,
        )
        main = out.heads[0]
        lp_old = old_logprobs[j] if old_logprobs is not None else main.logprob.detach()
        lp_rollout = out.gather(micro.rollout_logprobs)
        sequence_ids = out.gather(sequence_index(micro.position_ids))
        loss, metrics = compute_loss(
            run.loss_cfg,
            lp_old,
            main.logprob,
            out.gather(micro.advantages),
            torch.ones_like(lp_old),
            lp_mtp=[h.logprob for h in out.heads[1:]],
            mtp_masks=[out.mtp_mask(k) for k in range(1, model.num_mtp + 1)],
            num_tokens=num_tokens,
            mtp_num_tokens=mtp_tokens if model.num_mtp else None,
            lp_rollout=lp_rollout,
            occ_entries=padded_response_entries(micro.position_ids, micro.response_mask, micro.num_samples),
            sequence_ids=sequence_ids,
            num_sequences=micro.num_samples,
        )
        if not real:
            (loss * 0.0).backward()
            stats.padding_micro_batches += 1
            continue
        loss.backward()
        for key, value in metrics.items():
            if key.rsplit("/", 1)[-1] in ("lam", "c_hat", "v2_hat", "coef"):
                continue  # per micro-batch, not token-normalised: aggregated below
            stats.add(key, value)
            stats.loss_keys.add(key)
        stats.add("policy/entropy_sum", main.entropy.detach().sum())
        stats.mismatch.add(lp_old, lp_rollout, sequence_ids, micro.num_samples)
        stats.add("count/tokens", torch.tensor(float(lp_old.numel())))
        if model.num_mtp:
            # MTP depth 1: how often its argmax is the sampled token (speculative-acceptance proxy),
            # and the OCC proxy of this micro-batch.
            valid = out.mtp_mask(1)
            hit = (out.heads[1].logprob >= out.heads[1].max_logprob - 1e-6) & valid
            stats.add("mtp/hits", hit.sum())
            stats.add("count/mtp_rows", valid.sum())
            for key, value in draft_counts(out).items():  # the speculative-decoding forecast
                stats.add(key, value)
            stats.add("mtp/c_hat", metrics["mtp1/c_hat"] / real_micros)
            stats.add("mtp/v2_hat", metrics["mtp1/v2_hat"] / real_micros)
            first = stats.optimizer_steps + stats.nan_skipped == 0  # the rollout weights: lam is 0
            stats.lams.add(metrics["mtp1/lam"], first_mini_batch=first)
        if on_micro is not None:
            on_micro()
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
    grad_norm = clip_grad_norm(model, max_norm)  # the global norm: every rank steps or skips alike
    finite = bool(torch.isfinite(grad_norm))  # one host sync per optimizer step: never apply NaN/inf
    stats.finite.append(finite)
    if finite:
        run.optimizer.step()
        stats.optimizer_steps += 1
        stats.grad_norms.append(grad_norm.detach())
    else:
        logger.warning("non-finite gradient norm (%s): optimizer step skipped", float(grad_norm))
        stats.nan_skipped += 1
        stats.bad_grad_norm = float(grad_norm)
    run.optimizer.zero_grad(set_to_none=True)


def run_eval(run: Run, step: int) -> dict[str, float]:
    """avg@k and pass@k on the held-out problems; data parallel, each rank scores every W-th problem."""
    cfg, rank, world = run.cfg, run.dist.rank, run.dist.world_size
    records = eval_records(cfg)[rank::world]
    totals = torch.zeros(3)  # sum of avg@k, sum of pass@k, problems: each weighted by its problems
    if records:
        task = run.progress.add_task(f"step {step}: eval", total=None)
        result = evaluate(
            run.engine,
            run.tokenizer,
            records,
            run.scorer,
            k=cfg.eval.n,
            temperature=cfg.eval.temperature,
            max_new_tokens=cfg.rollout.max_new_tokens,
            seed=cfg.train.seed,
        )
        run.progress.remove_task(task)
        totals = torch.tensor([result.avg_at_k, result.pass_at_k, 1.0]) * len(records)
    totals = global_sum(totals).cpu()
    return {"eval/avg_at_k": float(totals[0] / totals[2]), "eval/pass_at_k": float(totals[1] / totals[2])}


def setup(cfg: Config, console: Console) -> Run:
    """Build (or restore) everything a run needs. Under torchrun: join the process group, build the
    same model on every rank (same seed), warm-start it, then shard it with FSDP2 before the
    optimizer exists; each rank then samples its rollouts from its own RNG stream."""
    device = resolve_device(cfg)
    info = init_distributed(device_type=device.type)
    sharded = dist.is_initialized()
    if sharded:
        device = info.device
        check_world_size(cfg, info.world_size)
    if not info.is_main:
        logger.setLevel(logging.WARNING)
    run_dir = cfg.run_dir
    checkpoint = resolve_resume(cfg)
    saved_config = checkpoint.parent.parent / "config.yaml" if checkpoint is not None else None
    changes = config_changes(saved_config, cfg) if saved_config is not None and saved_config.is_file() else []
    barrier()  # every rank has looked at the run directory before rank 0 writes into it
    records = train_records(cfg)  # bad data fails here, before the model is built
    check_answers(cfg.reward.fn, records)
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


def build_engine(
    cfg: Config,
    model: MTPModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    replica: torch.nn.Module | None = None,
    sharded: bool = False,
) -> RolloutEngine:
    """The rollout engine, starting from the model's current weights (initial, warm-started or resumed).

    ``replica``: a full, unsharded copy of the trunk for the transformers engine of an FSDP2 run
    (its weights are gathered in here); otherwise that engine samples from ``model.base`` itself."""
    if cfg.rollout.engine == "transformers":
        engine = TransformersEngine(
            replica if replica is not None else model.base, max_batch_size=cfg.rollout.batch_size
        )
        engine.sync_weights(model)  # a no-op without a replica
        return engine
    from occ_fast.rollout.vllm_engine import VLLMEngine

    start = cfg.run_dir / "rollout-init"  # vLLM loads from disk once; later syncs go through memory
    if sharded:
        export_hf(model, start, tokenizer=tokenizer)  # gathered, written by rank 0, read by every rank
    else:
        save_mtp_model(model, start, tokenizer=tokenizer)
    ro = cfg.rollout
    return VLLMEngine(
        start,
        gpu_memory_utilization=ro.gpu_memory_utilization,
        max_model_len=ro.max_model_len,
        seed=cfg.train.seed,
        speculative=ro.speculative,
        num_speculative_tokens=ro.num_speculative_tokens,
        sleep_level=ro.sleep_level,
        check_threshold=ro.sync_check_threshold,
    )


def resolve_resume(cfg: Config) -> Path | None:
    """The checkpoint to resume from: ``run.resume`` = ``auto`` (latest in the run dir, if any) or a path.

    A run directory counts as a run once it has logged a step or saved a checkpoint: one left by a
    run that failed at start (or was stopped before its first step) is simply started again."""
    latest = find_latest(cfg.run_dir)
    metrics = cfg.run_dir / "metrics.jsonl"
    trained = latest is not None or (metrics.is_file() and metrics.stat().st_size > 0)
    if cfg.run.resume is None:
        if trained:
            raise ConfigError(
                f"{cfg.run_dir} already holds a run: pass --run.resume auto to continue it, or a new --run.name"
            )
        return None
    if cfg.run.resume == "auto":
        if latest is None and trained:
            raise ConfigError(
                f"{cfg.run_dir} has metrics but no checkpoint to resume from (it stopped before its first "
                f"save): start again under a new --run.name, or delete {cfg.run_dir} and rerun this command"
            )
        return latest
    path = Path(cfg.run.resume)
    if not path.is_dir():
        raise ConfigError(f"run.resume: checkpoint directory not found: {path}")
    return path


def sft_warm_start(
    cfg: Config, model: MTPModel, tokenizer: PreTrainedTokenizerBase, progress: Progress
) -> None:
    if cfg.data.source != "synthetic":
        raise ConfigError("train.warmup_sft_steps needs data.source='synthetic' (it trains on known answers)")
    with progress:
        task = progress.add_task("SFT warm-start", total=cfg.train.warmup_sft_steps)
        loss = warm_start(
            model,
            tokenizer,
            train_records(cfg),
            steps=cfg.train.warmup_sft_steps,
            lr=cfg.train.sft_lr,
            batch_size=cfg.train.sft_batch_size,
            seed=cfg.train.seed,
            token_budget=cfg.optim.micro_batch_tokens,
            on_step=lambda step, loss: progress.update(
                task, completed=step + 1, description=f"SFT loss {loss:.3f}"
            ),
        )
        progress.remove_task(task)
    logger.info("SFT warm-start: %d steps, final answer-token loss %.4f", cfg.train.warmup_sft_steps, loss)


def save(run: Run, step: int) -> None:
    """A checkpoint of ``step``: sharded (every rank writes its shards) under torchrun."""
    write = save_sharded_checkpoint if run.sharded else save_checkpoint
    try:
        write(
            run.cfg.run_dir,
            step,
            run.model,
            run.optimizer,
            run.scheduler,
            extra={"next_step": step + 1, "sampler": run.sampler.state_dict()},
            keep_last=run.cfg.run.keep_last,
        )
    except Exception as e:
        failure = checkpoint_write_error(
            e, checkpoint_dir(run.cfg.run_dir, step), find_latest(run.cfg.run_dir)
        )
        if failure is None:
            raise
        raise failure from e


def step_line(step: int, m: dict[str, float]) -> str:
    parts = [f"step {step:4d}", f"reward {m['reward/mean']:.3f}", f"acc {m['reward/accuracy']:.3f}"]
    if "mtp/lam" in m:
        parts.append(f"lam {m['mtp/lam']:+.3f}")
    if "mtp/accuracy" in m:
        parts.append(f"mtp acc {m['mtp/accuracy']:.3f}")
    if "mismatch/abs_diff_mean" in m:
        parts.append(
            f"|Δlp| {m['mismatch/abs_diff_mean']:.1e}/{m['mismatch/abs_diff_max']:.1e} k3 {m['mismatch/kl_k3']:.1e}"
        )
    if "eval/avg_at_k" in m:
        parts.append(f"eval {m['eval/avg_at_k']:.3f}")
    if m.get("reward/error_rate"):
        parts.append(f"reward errors {m['reward/error_rate']:.0%}")
    parts.append(f"{m['time/step_s']:.1f}s")
    return " | ".join(parts)


def summarize(run: Run) -> Summary:
    history = run.history
    tail = history[-max(1, len(history) // 5) :] if history else []
    evals = [h["eval/avg_at_k"] for h in history if "eval/avg_at_k" in h]
    return Summary(
        run_dir=run.cfg.run_dir,
        steps=run.cfg.train.steps,
        reward_start=history[0]["reward/mean"] if history else float("nan"),
        reward_end=sum(h["reward/mean"] for h in tail) / len(tail) if tail else float("nan"),
        final_lam=history[-1].get("mtp/lam") if history else None,
        eval_accuracy=evals[-1] if evals else None,
        nan_skipped=int(sum(h["optim/nan_skipped"] for h in history)),
        reward_failures=int(sum(h.get("reward/errors", 0) + h.get("reward/timeouts", 0) for h in history)),
        proxy_vs_exact=proxy_exact_correlation(history) if run.cfg.mtp.exact_every else {},
        is_main=run.dist.is_main,
    )


if __name__ == "__main__":
    sys.exit(main())
