"""What a run shows a person: the per-step console line, the plots, the final summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from occ_fast.config import Config
from occ_fast.monitoring.diagnostics import proxy_exact_correlation

# The PNG plots a run draws (``run.plot_every`` and at the end): file name -> the metrics it shows.
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
PLOT_YLABELS = {
    "reward": "reward / accuracy (share of samples)",
    "occ_lambda": "MTP coefficient lam",
    "mtp_accuracy": "MTP top-1 accuracy",
    "entropy": "entropy (nats)",
}


@dataclass
class Summary:
    """What ``python -m occ_fast.train`` prints when a run ends."""

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
        final_lam=history[-1].get("mtp/lam") if history else None,
        eval_accuracy=evals[-1] if evals else None,
        nan_skipped=int(sum(h["optim/nan_skipped"] for h in history)),
        reward_failures=int(sum(h.get("reward/errors", 0) + h.get("reward/timeouts", 0) for h in history)),
        proxy_vs_exact=proxy_exact_correlation(history) if cfg.mtp.exact_every else {},
        is_main=is_main,
    )
