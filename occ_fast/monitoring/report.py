"""What a run shows a person: the per-step console line, the plots, the final summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from occ_fast.config import Config
from occ_fast.monitoring.diagnostics import proxy_exact_correlation
from occ_fast.monitoring.metrics import Panel

# The PNG plots a run draws (``run.plot_every`` and at the end): file name -> its panels, one per
# unit and scale, so that no quantity is drawn flat on another's axis.
PLOTS = {
    "reward": [
        Panel(["reward/mean", "reward/accuracy", "eval/avg_at_k"], "reward / accuracy (share of samples)")
    ],
    "occ_lambda": [
        Panel(
            ["mtp/lam"],
            "MTP coefficient lam",
            band=("mtp/lam_min", "mtp/lam_max"),
            note="mtp/lam: mean over the micro-batches where lam is applied\n"
            "mtp/lam_first_minibatch: 0 by construction (the rollout weights), not drawn",
        )
    ],
    "occ_proxy": [
        Panel(["mtp/c_hat"], "c_hat (mean d_rl × d_mtp)"),
        Panel(["mtp/v2_hat"], "v2_hat (mean d_mtp²)", log=True),
    ],
    "mtp_accuracy": [Panel(["mtp/accuracy"], "MTP top-1 accuracy")],
    "entropy": [Panel(["policy/entropy"], "entropy (nats)")],
    "occ_exact": [Panel(["exact/lam_star", "exact/lam_proxy"], "MTP coefficient lam")],
    "rollout_mismatch": [
        Panel(["mismatch/abs_diff_mean"], "mean |Δ log-prob| (nats)", log=True),
        Panel(["mismatch/kl_k1"], "KL estimate k1 (nats)"),
        Panel(["mismatch/kl_k3"], "KL estimate k3 (nats)", log=True),
        Panel(["mismatch/frac_above_threshold"], "share over threshold"),
    ],
}


@dataclass
class Summary:
    """What ``python -m occ_fast.train`` prints when a run ends."""

    run_dir: Path
    steps: int
    reward_start: float  # the first step's mean reward
    reward_end: float  # the mean reward over the last ``reward_end_steps`` steps (a fifth of them)
    reward_end_steps: int
    final_lam: float | None
    eval_accuracy: float | None
    nan_skipped: int
    reward_failures: int = 0  # samples whose reward raised or timed out
    proxy_vs_exact: dict[str, float] = field(default_factory=dict)
    is_main: bool = True  # rank 0 (or a single process): the one that reports

    def reward_change(self) -> str:
        """``0.336 (first step) -> 0.494 (mean of the last 4 steps)``: the two figures say what they are,
        since the second is a mean over several steps, not the last step's reward."""
        n = self.reward_end_steps
        last = "last step" if n == 1 else f"mean of the last {n} steps"
        return f"{self.reward_start:.3f} (first step) -> {self.reward_end:.3f} ({last})"


def step_line(step: int, m: dict[str, float]) -> str:
    """The console line of one step (every ``run.log_every`` steps, and the last)."""
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


def summarize(cfg: Config, history: Sequence[dict[str, float]], *, is_main: bool) -> Summary:
    """The final report from every step's metrics (a resumed run's history starts at its first step)."""
    tail = history[-max(1, len(history) // 5) :] if history else []
    evals = [h["eval/avg_at_k"] for h in history if "eval/avg_at_k" in h]
    return Summary(
        run_dir=cfg.run_dir,
        steps=cfg.train.steps,
        reward_start=history[0]["reward/mean"] if history else float("nan"),
        reward_end=sum(h["reward/mean"] for h in tail) / len(tail) if tail else float("nan"),
        reward_end_steps=len(tail),
        final_lam=history[-1].get("mtp/lam") if history else None,
        eval_accuracy=evals[-1] if evals else None,
        nan_skipped=int(sum(h["optim/nan_skipped"] for h in history)),
        reward_failures=int(sum(h.get("reward/errors", 0) + h.get("reward/timeouts", 0) for h in history)),
        proxy_vs_exact=proxy_exact_correlation(history) if cfg.mtp.exact_every else {},
        is_main=is_main,
    )
