"""GRPO/DAPO training with jointly trained MTP heads: ``python -m occ_fast.train [--preset NAME] [--field value ...]``.

With no arguments it runs the ``tiny`` preset on a laptop CPU: a small random model with one MTP
head is warm-started on synthetic arithmetic, then trained with GRPO and the OCC-calibrated MTP
term. This file is the loop; one RL step is :func:`occ_fast.training.step.rl_step`, read top to
bottom, and :func:`occ_fast.training.setup.setup` builds (or restores) what it needs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from occ_fast.monitoring.early_interrupt import exit_at_once_on_sigint

if __name__ == "__main__":  # Ctrl-C during the imports below (seconds): one line, not a traceback
    exit_at_once_on_sigint()

import torch.distributed as dist
from rich.console import Console
from rich.logging import RichHandler

from occ_fast import threads
from occ_fast.checkpointing.files import CheckpointError, checkpoint_dir, find_latest
from occ_fast.checkpointing.resume import NothingToTrain
from occ_fast.checkpointing.run_lock import hold_run_dir
from occ_fast.checkpointing.sharded import export_hf, save_sharded_checkpoint
from occ_fast.checkpointing.single_process import save_checkpoint
from occ_fast.config import Config, ConfigError, parse_config
from occ_fast.data import DatasetError
from occ_fast.distributed.process_group import exit_rank
from occ_fast.model import ModelDirError, save_mtp_model
from occ_fast.monitoring.health import TrainingHalted
from occ_fast.monitoring.interrupt import GracefulStop, Interrupted, resume_command
from occ_fast.monitoring.metrics import MetricsWriteError
from occ_fast.monitoring.output import OutputError, checkpoint_write_error
from occ_fast.monitoring.report import PLOTS, Summary, step_line, summarize
from occ_fast.rewards.loader import RewardFnImportError
from occ_fast.rollout.drafter_probe import DrafterSyncError
from occ_fast.rollout.vllm_engine import WeightSyncError
from occ_fast.training.heldout import run_eval
from occ_fast.training.master_weights import fp32_weights
from occ_fast.training.setup import Run, setup
from occ_fast.training.step import rl_step

# User errors found at start (bad data, reward function, checkpoint): one line, no traceback.
START_ERRORS = (DatasetError, RewardFnImportError, CheckpointError, OutputError, ModelDirError)
# The run stopped itself (one line, exit status 1): unhealthy, or rollout engine and trainer disagree.
RUN_STOPS = (TrainingHalted, WeightSyncError, DrafterSyncError)


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
    except NothingToTrain as done:  # a finished run resumed again: say so, and succeed
        if os.environ.get("RANK", "0") == "0":
            console.print(str(done), soft_wrap=True)
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not summary.is_main:
        return 0
    lam = "n/a" if summary.final_lam is None else f"{summary.final_lam:+.4f}"
    acc = "n/a" if summary.eval_accuracy is None else f"{summary.eval_accuracy:.3f}"
    console.print(
        f"[bold]done[/] {summary.steps} steps | reward {summary.reward_change()}"
        f" | final lam {lam} | held-out accuracy {acc} | NaN steps skipped {summary.nan_skipped}"
        f" | reward failures {summary.reward_failures}\n"
        f"run directory: {summary.run_dir}",
        soft_wrap=True,  # not broken at the terminal width: the line is parsed, the path copied
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
    with GracefulStop() as stop, hold_run_dir(cfg.run_dir):  # the lock first: before any write there
        run = setup(cfg, console)
        try:
            stop.deferred = True  # from here a signal lets the step finish, then saves it
            run_loop(run, stop)
            if run.metrics is not None:
                run.metrics.plot(PLOTS)
                run.metrics.close()
            run.scorer.close()
            if run.sharded:  # gathered, written by rank 0
                export_hf(run.model, cfg.run_dir / "model", tokenizer=run.tokenizer)
            else:  # the fp32 masters of a bf16 run, as FSDP2's export writes them
                with fp32_weights(run.optimizer):
                    save_mtp_model(run.model, cfg.run_dir / "model", tokenizer=run.tokenizer)
        finally:  # the engine goes first: vLLM's shutdown tears down the process groups it uses
            if (close := getattr(run.engine, "close", None)) is not None:
                close()
    return summarize(cfg, run.history, is_main=run.dist.is_main)


def run_loop(run: Run, stop: GracefulStop) -> None:
    """Steps from ``run.start_step`` to ``train.steps``, with logging, evaluation and checkpoints."""
    cfg, main_rank = run.cfg, run.dist.is_main
    with run.progress:
        steps = run.progress.add_task("RL steps", total=cfg.train.steps, completed=run.start_step)
        for step in range(run.start_step, cfg.train.steps):
            metrics = rl_step(run, step)
            if cfg.eval.every and ((step + 1) % cfg.eval.every == 0 or step + 1 == cfg.train.steps):
                metrics.update(run_eval(run, step))
            write_error = log_metrics(run, step, metrics) if run.metrics is not None else None
            run.history.append(metrics)
            if main_rank and (
                (cfg.run.log_every and step % cfg.run.log_every == 0) or step + 1 == cfg.train.steps
            ):
                run.progress.console.print(step_line(step, metrics))
            run.health.end_step(step, metrics, cfg.run_dir)
            run.nonfinite.check(cfg.run_dir, run.health.suspect_from)
            run.reward_health.end_step(step, metrics["reward/error_rate"])
            saved = (
                cfg.run.save_every and (step + 1) % cfg.run.save_every == 0
            ) or step + 1 == cfg.train.steps
            if saved:
                save(run, step)
            if run.metrics is not None and cfg.run.plot_every and (step + 1) % cfg.run.plot_every == 0:
                run.metrics.plot(PLOTS)
            run.progress.advance(steps)
            signum, halted = stop.agreed(run.device, halted=write_error is not None)
            if halted:
                halt_after(run, step, write_error, saved=saved)
            if signum is not None and step + 1 < cfg.train.steps:  # after the last step: finish the run
                stop_after(run, step, signum, saved=saved)


def log_metrics(run: Run, step: int, metrics: dict[str, float]) -> MetricsWriteError | None:
    """Write ``step``'s metrics (rank 0); the error when they cannot be written (a full disk). The
    run stops on it only after every rank has heard of it (:func:`halt_after`)."""
    try:
        run.metrics.log(step, metrics)
    except MetricsWriteError as err:
        return err
    return None


def halt_after(run: Run, step: int, error: MetricsWriteError | None, *, saved: bool) -> None:
    """Stop every rank at a checkpoint of ``step`` (all of them write it) because one rank could not
    write its output: that rank names the fault and the command that resumes, in one line (exit 1)."""
    if not saved:
        save(run, step)
    checkpoint = find_latest(run.cfg.run_dir)
    command = resume_command(run.cfg.run_dir / "config.yaml", run.dist.world_size)
    cause = error if error is not None else "another rank could not write its output"
    raise TrainingHalted(
        f"{cause} at step {step}: stopped at checkpoint {checkpoint}; resume with: {command}"
    )


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


def save(run: Run, step: int) -> None:
    """A checkpoint of ``step``: sharded (every rank writes its shards) under torchrun; the model's
    weights are the fp32 masters of a bf16 run."""
    write = save_sharded_checkpoint if run.sharded else save_checkpoint
    try:
        with fp32_weights(run.optimizer):
            write(
                run.cfg.run_dir,
                step,
                run.model,
                run.optimizer,
                run.scheduler,
                extra={"next_step": step + 1, "sampler": run.sampler.state_dict()},
                keep_last=run.cfg.run.keep_last,
                health=run.health.record(),  # pruning keeps the newest healthy checkpoint
            )
    except Exception as e:
        failure = checkpoint_write_error(
            e, checkpoint_dir(run.cfg.run_dir, step), find_latest(run.cfg.run_dir)
        )
        if failure is None:
            raise
        raise failure from e


if __name__ == "__main__":
    exit_rank(main())
