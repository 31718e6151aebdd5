"""Timing, memory and reporting helpers shared by the benchmarks.

GPU: CUDA-event timings (median of repeats after warm-up) and ``max_memory_allocated`` above the
inputs. CPU: wall-clock medians, and peak memory as the growth of the resident high-water mark
(``occ_fast.kernels.memory``) in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

RESULTS_DIR = Path(os.environ.get("OCC_FAST_RESULTS_DIR") or Path(__file__).parent / "results")


@dataclass
class Row:
    case: str
    impl: str
    mode: str  # "fwd" or "fwd+bwd"
    ms: float | None
    tflops: float | None  # credited: 2NHV (fwd) or 6NHV (fwd+bwd) whatever the implementation computes
    tflops_executed: float | None  # the FLOPs this implementation actually executes (8NHV with recompute)
    peak_gb: float | None
    frac_of_matmul_peak: float | None
    note: str = ""
    extra: dict = field(default_factory=dict)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def median_ms(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cuda_peak_gb(fn: Callable[[], object]) -> float:
    """Peak memory allocated by ``fn`` above what was allocated before it, in GB."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def cpu_peak_gb(script: str, *args: str) -> float:
    """Run ``script`` (which prints the resident-peak growth in bytes last) in a fresh interpreter."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=600,
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1e9


def matmul_peak_tflops() -> float:
    """Dense matmul throughput measured now: bf16 8192^3 on GPU, fp32 1024^3 on CPU."""
    if torch.cuda.is_available():
        n, dtype, repeats = 8192, torch.bfloat16, 10
        a = torch.randn(n, n, device="cuda", dtype=dtype)
    else:
        n, dtype, repeats = 1024, torch.float32, 5
        a = torch.randn(n, n, dtype=dtype)
    b = torch.randn_like(a)
    ms = median_ms(lambda: a @ b, repeats=repeats)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def format_table(title: str, rows: list[Row], peak: float) -> str:
    """A markdown table of ``rows`` (plain text: readable in a terminal and in a README)."""
    cols = (
        "case",
        "impl",
        "mode",
        "ms",
        "TFLOP/s credited",
        "TFLOP/s executed",
        "of matmul peak",
        "peak GB",
        "note",
    )
    lines = [
        f"{title} on {device_name()} (matmul peak measured in the same run: {peak:.3g} TFLOP/s)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    for r in rows:
        cells = (r.case, r.impl, r.mode, fmt(r.ms, ".2f"), fmt(r.tflops, ".3g"), fmt(r.tflops_executed, ".3g"),
                 fmt(r.frac_of_matmul_peak, ".0%"), fmt(r.peak_gb, ".3f"), r.note)  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(name: str, rows: list[Row], peak: float, conventions: str, table: str, **extra) -> Path:
    """``results/<name>-<device>/results.json`` and the table as ``summary.md`` beside it."""
    dev = device_name().replace(" ", "_").replace("/", "_")
    directory = RESULTS_DIR / f"{name}-{dev}"
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": device_name(),
        "torch": torch.__version__,
        "matmul_peak_tflops": peak,
        "conventions": conventions,
        "rows": [asdict(r) for r in rows],
        **extra,
    }
    (directory / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (directory / "summary.md").write_text(table + "\n")
    return directory
