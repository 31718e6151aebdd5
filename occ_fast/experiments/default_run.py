"""The default run's figures: ``python -m occ_fast.experiments.default_run``.

Runs ``python -m occ_fast.train`` with no arguments (the ``tiny`` preset, transformers rollout engine)
in a fresh working directory, exactly as a user would, and writes what the README reports about it:
wall time, reward at the first step and over the last fifth of the steps (the trainer's own summary),
greedy held-out accuracy, the final OCC coefficient, and the rollout-vs-trainer mismatch of the
transformers engine over the run (``mismatch/*`` in metrics.jsonl). Output: ``results.json`` and
``summary.md`` (the snippet README.md includes) under ``--output``::

    python -m occ_fast.experiments.default_run --output benchmarks/results/default-run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from occ_fast.monitoring.metrics import read_metrics


def run_default(workdir: Path) -> tuple[float, Path]:
    """``python -m occ_fast.train`` in ``workdir``: its wall time and run directory."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "occ_fast.train"], cwd=workdir, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"python -m occ_fast.train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    (run_dir,) = (workdir / "runs").iterdir()
    return elapsed, run_dir


def figures(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """What the README states, from the run's metrics (the trainer's summary uses the same tail)."""
    tail = metrics[-max(1, len(metrics) // 5) :]
    evals = [m["eval/avg_at_k"] for m in metrics if "eval/avg_at_k" in m]

    def over_steps(key: str, reduce=statistics.fmean) -> float:
        return reduce(m[key] for m in metrics)

    return {
        "steps": len(metrics),
        "reward_first_step": metrics[0]["reward/mean"],
        "reward_last_steps": statistics.fmean(m["reward/mean"] for m in tail),
        "last_steps": len(tail),
        "heldout_accuracy": evals[-1] if evals else None,
        "final_lam": metrics[-1].get("mtp/lam"),
        "mismatch": {
            "abs_diff_mean": over_steps("mismatch/abs_diff_mean"),
            "abs_diff_max": over_steps("mismatch/abs_diff_max", max),
            "kl_k1": over_steps("mismatch/kl_k1"),
            "kl_k3": over_steps("mismatch/kl_k3"),
            "frac_above_threshold": over_steps("mismatch/frac_above_threshold"),
            "seq_log_ratio_min": over_steps("mismatch/seq_log_ratio_min", min),
            "seq_log_ratio_max": over_steps("mismatch/seq_log_ratio_max", max),
            "seq_abs_diff_max": over_steps("mismatch/seq_abs_diff_max", max),
        },
    }


def write_summary(path: Path, results: dict[str, Any]) -> None:
    f, mm = results["figures"], results["figures"]["mismatch"]
    accuracy = "n/a" if f["heldout_accuracy"] is None else f"{f['heldout_accuracy']:.2f}"
    lam = "n/a" if f["final_lam"] is None else f"{f['final_lam']:+.4f}"
    threads = f"OMP_NUM_THREADS={results['omp_num_threads']} " if results.get("omp_num_threads") else ""
    lines = [
        f"Measured by `{threads}python -m occ_fast.experiments.default_run` ({results['cpus']} CPU cores, "
        f"load average {results['load_before']:.1f} when it started): `python -m occ_fast.train` took "
        f"{results['wall_s']:.0f} s; reward {f['reward_first_step']:.2f} at the first step, "
        f"{f['reward_last_steps']:.2f} over the last {f['last_steps']}, greedy held-out accuracy {accuracy}, "
        f"final OCC lam {lam}.",
        "",
        f"Rollout vs trainer log-probs, transformers engine, over the {f['steps']} steps (per-step mean, "
        "or the extreme over all steps):",
        "",
        "| mean abs diff | max abs diff | k1 KL | k3 KL | share above threshold | sequence log-ratio min .. max | largest sequence mean abs diff |",
        "|---|---|---|---|---|---|---|",
        f"| {mm['abs_diff_mean']:.2e} | {mm['abs_diff_max']:.2e} | {mm['kl_k1']:+.2e} | {mm['kl_k3']:.2e} "
        f"| {mm['frac_above_threshold']:.4f} | {mm['seq_log_ratio_min']:+.2e} .. {mm['seq_log_ratio_max']:+.2e} "
        f"| {mm['seq_abs_diff_max']:.2e} |",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m occ_fast.experiments.default_run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/default-run"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="occ-default-run-") as tmp:
        wall_s, run_dir = run_default(Path(tmp))
        metrics = read_metrics(run_dir / "metrics.jsonl")
    results = {
        "command": "python -m occ_fast.train",
        "wall_s": wall_s,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.machine(),
        "figures": figures(metrics),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_summary(args.output / "summary.md", results)
    print(f"results: {args.output / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
