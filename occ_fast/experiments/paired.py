"""Paired comparisons of seeds: every arm against the reference the same way.

Each seed's arms share a warm start, so an arm is judged by its per-seed differences from the
reference: their mean with a 95% t interval, "above", "below" or "within noise" by whether that
interval excludes 0, the exact two-sided sign-test p-value of how many seeds lie above, and the
minimum detectable difference (MDD) that a paired t-test at 5% detects with 80% power given the
differences' spread. A null result is reported with its MDD: it says how large an effect was ruled out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

ALPHA = 0.05
POWER = 0.8


def t_cdf(x: float, df: int) -> float:
    """Student's t distribution function (Simpson's rule on the density; error below 1e-9)."""
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = lambda t: math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))  # noqa: E731
    steps = 4000
    h = x / steps
    total = density(0.0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t, by bisection on :func:`t_cdf`."""
    low, high = -1e3, 1e3
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def sign_test_p(above: int, below: int) -> float:
    """Exact two-sided sign test of ``above`` against ``below`` (ties dropped) at 1/2."""
    n = above + below
    if n == 0:
        return 1.0
    k = min(above, below)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def compare(differences: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% interval, reading, sign test and MDD of one arm's per-seed differences."""
    n = len(differences)
    out: dict[str, Any] = {"n": n, "mean": statistics.mean(differences) if n else None}
    out["above"] = sum(d > 0 for d in differences)
    out["below"] = sum(d < 0 for d in differences)
    out["sign_p"] = sign_test_p(out["above"], out["below"])
    if n < 2:
        return out | {"low": None, "high": None, "mdd": None, "reading": "too few seeds"}
    se = statistics.stdev(differences) / math.sqrt(n)
    half = t_quantile(1 - ALPHA / 2, n - 1) * se
    out |= {"low": out["mean"] - half, "high": out["mean"] + half}
    out["mdd"] = (t_quantile(1 - ALPHA / 2, n - 1) + t_quantile(POWER, n - 1)) * se
    out["reading"] = "above" if out["low"] > 0 else "below" if out["high"] < 0 else "within noise"
    return out


def paired(rows: Sequence[dict[str, Any]], reference: str, arm: str, key: str) -> list[float]:
    """``key`` of ``arm`` minus ``reference`` on every seed both have."""
    base = {r["seed"]: r[key] for r in rows if r["setting"] == reference and r.get(key) is not None}
    return [
        r[key] - base[r["seed"]]
        for r in rows
        if r["setting"] == arm and r.get(key) is not None and r["seed"] in base
    ]


COLUMNS = "95% interval | reading | seeds above/below | sign-test p | MDD"


def row(label: str, c: dict[str, Any]) -> str:
    """One markdown row of :func:`compare`'s result, its cells in :data:`COLUMNS`' order after the mean."""
    interval = "–" if c["low"] is None else f"[{c['low']:+.3f}, {c['high']:+.3f}]"
    mdd = "–" if c["mdd"] is None else f"{c['mdd']:.3f}"
    return (
        f"| {label} | {c['mean']:+.3f} | {interval} | {c['reading']} | {c['above']}/{c['below']} of {c['n']} "
        f"| {c['sign_p']:.3f} | {mdd} |"
    )


def comparison_lines(
    rows: Sequence[dict[str, Any]], reference: str, arms: Sequence[str], key: str
) -> list[str]:
    """One row per arm: paired difference from ``reference`` with its interval, reading, seeds
    above/below, sign-test p and MDD (markdown)."""
    lines = [f"| arm | paired Δ from `{reference}` | {COLUMNS} |", "|---|---|---|---|---|---|---|"]
    for arm in arms:
        if arm == reference:
            continue
        c = compare(paired(rows, reference, arm, key))
        if c["n"]:
            lines.append(row(arm, c))
    return lines
