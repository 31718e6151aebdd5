"""What the OCC proxy measures (method.md section 7): ``python -m occ_fast.experiments.proxy``.

Trains a preset (default ``tiny``; ``--preset carries`` for the longer worked answers) under ``occ`` at several learning rates, from one shared SFT warm start,
with the exact diagnostics on
(``--mtp.exact-every``), and compares, on every diagnosed mini-batch, the proxy's coefficient, the
exact optimum ``lam* = c / v2`` and ``corr(d_rl, gap) * rms(d_rl) / rms(gap)`` with
``gap = lp_mtp - lp_main`` (:func:`occ_fast.algorithm.occ.gap_form`). Since ``d_mtp = gap + d_rl`` and
one optimizer step moves ``lp_main`` by far less than the head gap, the proxy should follow that
product: grow with the learning rate, unlike ``lam*``. Writes ``results.json`` (every diagnosed row
and the per-rate summary) and ``summary.md`` (the table the README includes)::

    python -m occ_fast.experiments.proxy --output benchmarks/results/occ-proxy
    python -m occ_fast.experiments.proxy --lrs 1e-4 2e-4 5e-4 --steps 30 --exact-every 2
    python -m occ_fast.experiments.proxy --preset carries --output benchmarks/results/occ-proxy-carries
    python -m occ_fast.experiments.proxy --output benchmarks/results/occ-proxy --summarize-only
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from occ_fast.config import ConfigError, parse_config
from occ_fast.experiments.regimes import add_preset_argument, build_warm_start, warm_start_dir
from occ_fast.monitoring.diagnostics import proxy_exact_correlation
from occ_fast.monitoring.metrics import read_metrics
from occ_fast.train import train

DEFAULT_LRS = ("1e-4", "2e-4", "5e-4")
ROW_KEYS = ("lam_proxy", "lam_star", "gap_form", "corr", "rms_d_rl", "rms_gap", "cosine", "v2")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m occ_fast.experiments.proxy",
        description="OCC proxy vs exact lam* and the gap form, at several learning rates.",
    )
    add_preset_argument(parser)
    parser.add_argument(
        "--lrs", nargs="+", default=list(DEFAULT_LRS), help="learning rates (default 1e-4 2e-4 5e-4)"
    )
    parser.add_argument("--steps", type=int, default=30, help="RL steps per run (default 30)")
    parser.add_argument("--exact-every", type=int, default=2, help="diagnose every N steps (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="train and data seed (default 0)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("benchmarks/results/occ-proxy"),
        help="results.json and summary.md",
    )
    parser.add_argument(
        "--runs", type=Path, default=Path("runs/occ-proxy"), help="the training runs' directory"
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help='trainer overrides for every run, e.g. --extra="--train.steps 20"',
    )
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="rewrite summary.md from --output's results.json; train nothing",
    )
    args = parser.parse_args(argv)
    args.extra = [token for chunk in args.extra for token in shlex.split(chunk)]
    try:
        args.lr_values = [float(lr) for lr in args.lrs]
    except ValueError:
        parser.error(f"--lrs must be numbers, got {args.lrs}")
    if any(not (math.isfinite(lr) and lr > 0) for lr in args.lr_values):
        parser.error(f"--lrs must be finite and > 0, got {args.lrs}")
    if args.steps < 1 or args.exact_every < 1:
        parser.error("--steps and --exact-every must be >= 1")
    return args


def warm_start(args: argparse.Namespace) -> Path:
    """The SFT warm start every learning rate starts RL from, trained once (as the regime sweep does)."""
    sweep = SimpleNamespace(output=args.runs, preset=args.preset, extra=args.extra, steps=args.steps)
    target = warm_start_dir(sweep, args.seed)
    if not target.is_dir():
        build_warm_start(sweep, args.seed, Console(quiet=True))
    return target


def run_argv(args: argparse.Namespace, lr: str) -> list[str]:
    return [
        "--preset", args.preset,
        *args.extra,
        "--model.name-or-path", str(warm_start_dir(SimpleNamespace(output=args.runs), args.seed)),
        "--model.mtp-init", "checkpoint",
        "--train.warmup-sft-steps", "0",
        "--mtp.regime", "occ",
        "--optim.lr", lr,
        "--train.steps", str(args.steps),
        "--mtp.exact-every", str(args.exact_every),
        "--train.seed", str(args.seed),
        "--data.seed", str(args.seed),
        "--eval.every", "0",
        "--run.output-dir", str(args.runs),
        "--run.name", f"lr-{lr}",
    ]  # fmt: skip


def diagnosed_rows(metrics: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The diagnosed steps whose ``lam*`` is defined (``v2 > 0``), with the compared quantities."""
    return [
        {"step": m["step"], **{key: m[f"exact/{key}"] for key in ROW_KEYS}}
        for m in metrics
        if "exact/lam_star" in m and m.get("exact/v2", 0) > 0
    ]


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation; NaN under 2 points or when either series is constant."""
    if len(xs) < 2:
        return math.nan
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def summarize_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Medians of the compared quantities and how the proxy relates to each over one run's rows."""
    if not rows:
        return {"rows": 0}
    col = {key: [r[key] for r in rows] for key in ROW_KEYS}
    ratios = [p / g for p, g in zip(col["lam_proxy"], col["gap_form"]) if g != 0]
    # The proxy's other part, sum(d_rl^2) / sum(d_mtp^2) with d_mtp = gap + d_rl, is about
    # rms(d_rl)^2 / (rms(d_rl)^2 + rms(gap)^2) when d_rl and gap are nearly uncorrelated (corr ~ 0).
    other = [d * d / (d * d + g * g) for d, g in zip(col["rms_d_rl"], col["rms_gap"]) if d or g]
    over_other = [abs(p) / o for p, o in zip(col["lam_proxy"], other) if o > 0]
    exact = proxy_exact_correlation(
        [{"exact/lam_star": s, "exact/lam_proxy": p} for s, p in zip(col["lam_star"], col["lam_proxy"])]
    )
    return {
        "rows": len(rows),
        **{f"median_{key}": statistics.median(values) for key, values in col.items()},
        "median_abs_lam_proxy": statistics.median(abs(x) for x in col["lam_proxy"]),
        "median_abs_lam_star": statistics.median(abs(x) for x in col["lam_star"]),
        "pearson_proxy_gap_form": pearson(col["lam_proxy"], col["gap_form"]),
        "median_proxy_over_gap_form": statistics.median(ratios) if ratios else math.nan,
        "median_other_part": statistics.median(other) if other else math.nan,
        "median_abs_proxy_over_other_part": statistics.median(over_other) if over_other else math.nan,
        "pearson_proxy_lam_star": exact["exact/proxy_pearson"],
        "sign_agreement_proxy_lam_star": exact["exact/proxy_sign_agreement"],
    }


def write_summary(path: Path, results: dict[str, Any]) -> None:
    """The markdown snippet the README includes: one row per learning rate, then the reading."""
    lines = [
        f"Measured by `{results['command']}` ({results.get('preset', 'tiny')} preset, `occ`, {results['steps']} RL steps, exact "
        f"diagnostics every {results['exact_every']} steps on the last mini-batch; medians over the "
        "diagnosed steps; `gap form` = corr(d_rl, gap) · rms(d_rl) / rms(gap); `other part` = "
        "rms(d_rl)² / (rms(d_rl)² + rms(gap)²), the proxy's remaining term sum(d_rl²) / sum(d_mtp²) "
        "when d_rl and the gap are nearly uncorrelated):",
        "",
        "| lr | steps diagnosed | proxy lam | exact lam* | gap form | Pearson(proxy, gap form) "
        "| proxy / gap form | Pearson(proxy, lam*) | sign agreement | rms(d_rl) | rms(gap) | corr(d_rl, gap) "
        "| other part | \\|proxy\\| / other part |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lr, s in results["summary"].items():
        if not s["rows"]:
            lines.append(f"| {lr} | 0 |" + " – |" * 12)
            continue
        lines.append(
            f"| {lr} | {s['rows']} | {s['median_lam_proxy']:+.4f} | {s['median_lam_star']:+.3f} "
            f"| {s['median_gap_form']:+.4f} | {s['pearson_proxy_gap_form']:.3f} "
            f"| {s['median_proxy_over_gap_form']:.2f} | {s['pearson_proxy_lam_star']:+.3f} "
            f"| {s['sign_agreement_proxy_lam_star']:.2f} | {s['median_rms_d_rl']:.4f} "
            f"| {s['median_rms_gap']:.2f} | {s['median_corr']:+.3f} | {s['median_other_part']:.5f} "
            f"| {s['median_abs_proxy_over_other_part']:.1f} |"
        )
    lines += ["", reading(results["summary"])]
    path.write_text("\n".join(lines) + "\n")


def reading(summary: dict[str, dict[str, float]]) -> str:
    """One sentence stating the finding, with its figures."""
    rated = [(float(lr), s) for lr, s in summary.items() if s["rows"]]
    if len(rated) < 2:
        return "Too few diagnosed steps to compare learning rates."
    (lo, s_lo), (hi, s_hi) = min(rated, key=lambda t: t[0]), max(rated, key=lambda t: t[0])
    base = s_lo["median_abs_lam_proxy"]
    growth = f"{s_hi['median_abs_lam_proxy'] / base:.1f}x" if base > 0 else "from 0"
    return (
        f"From lr {lo:g} to {hi:g} ({hi / lo:.1f}x) the median |proxy lam| goes from "
        f"{s_lo['median_abs_lam_proxy']:.4f} to {s_hi['median_abs_lam_proxy']:.4f} "
        f"({growth}) and rms(d_rl) from "
        f"{s_lo['median_rms_d_rl']:.4f} to {s_hi['median_rms_d_rl']:.4f}, while the median |lam*| goes from "
        f"{s_lo['median_abs_lam_star']:.3f} to {s_hi['median_abs_lam_star']:.3f}; per step the proxy's "
        f"Pearson correlation is {_span(rated, 'pearson_proxy_gap_form')} with the gap form and "
        f"{_span(rated, 'pearson_proxy_lam_star')} with lam* across the rates."
    )


def _span(rated: list[tuple[float, dict[str, float]]], key: str) -> str:
    """``between a and b`` (or ``c`` when they agree) of ``key`` over the rates, 3 decimals."""
    low, high = min(s[key] for _, s in rated), max(s[key] for _, s in rated)
    return f"{low:+.3f}" if f"{low:+.3f}" == f"{high:+.3f}" else f"between {low:+.3f} and {high:+.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    results_path = args.output / "results.json"
    if args.summarize_only:
        if not results_path.is_file():
            console.print(f"[bold red]--summarize-only: {results_path} not found[/]")
            return 2
        results = json.loads(results_path.read_text())
        results["summary"] = {
            lr: summarize_rows(r) for lr, r in results["rows"].items()
        }  # this code's figures
        write_summary(args.output / "summary.md", results)
        return 0
    try:
        configs = {lr: parse_config(run_argv(args, lr)) for lr in args.lrs}
    except ConfigError as err:
        console.print(f"[bold red]invalid configuration[/]\n{err}")
        return 2
    busy = [str(c.run_dir) for c in configs.values() if c.run_dir.exists()]
    if not busy:
        with console.status("SFT warm start"):
            warm_start(args)
    if busy:
        console.print(f"[bold red]run directories already exist[/]: {', '.join(busy)}; choose another --runs")
        return 2
    rows: dict[str, list[dict[str, float]]] = {}
    for lr, cfg in configs.items():
        with console.status(f"lr {lr}: training with exact diagnostics"):
            train(cfg, console=Console(quiet=True))
        rows[lr] = diagnosed_rows(read_metrics(cfg.run_dir / "metrics.jsonl"))
        console.print(f"lr {lr}: {len(rows[lr])} diagnosed steps")
    results = {
        "command": "python -m occ_fast.experiments.proxy "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "preset": args.preset,
        "steps": args.steps,
        "exact_every": args.exact_every,
        "seed": args.seed,
        "extra": args.extra,
        "rows": rows,
        "summary": {lr: summarize_rows(r) for lr, r in rows.items()},
    }
    args.output.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    write_summary(args.output / "summary.md", results)
    console.print(f"results: {args.output / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
