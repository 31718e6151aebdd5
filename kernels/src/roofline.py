"""Roofline estimate of the Triton log-prob op, and its backward's peak memory, for a shape and GPU.

    python -m occ_fast.kernels.roofline                       # target shape, H100 and A100, printed
    python -m occ_fast.kernels.roofline --write benchmarks/results/kernel-roofline

Per phase (forward; backward dlogits; the dH and dW GEMMs): FLOPs, HBM bytes under the
grouped program order (each hidden block read once per group, each weight tile once per group of
``GROUP_M`` row blocks, the rest served from L2), and the time ``max(FLOPs / peak, bytes /
bandwidth)`` at datasheet peaks: a lower bound a first GPU run can be judged against. Row-major
program order (the order before grouping) is shown for the forward's bytes. Datasheet figures,
not measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import tiling
from .logprob import default_chunk_rows
from .logprob_triton import forward_splits

TARGET = dict(m=32768, h=4096, v=151936)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def estimate(arch: tiling.Arch, m: int, h: int, v: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """FLOPs, bytes and roofline time per phase; backward peak memory (bytes)."""
    b = torch.finfo(dtype).bits // 8
    tile = tiling.choose(arch.capability, m, dtype)
    weight = torch.empty(v, h, dtype=dtype, device="meta")
    chunk = min(m, default_chunk_rows("triton", weight))
    chunks = _cdiv(m, chunk)
    row_blocks, vocab_tiles = _cdiv(m, tile.block_m), _cdiv(v, tile.block_v)
    groups = _cdiv(row_blocks, tile.group_m)
    splits = forward_splits(m, v, tile, arch.multiprocessors)
    chunk_groups = chunks * _cdiv(_cdiv(chunk, tile.block_m), tile.group_m)
    gemm = 2 * m * h * v
    phases = {
        "forward": dict(flops=gemm, bytes=m * h * b + groups * v * h * b + 4 * 4 * splits * m),
        "backward dlogits": dict(flops=gemm, bytes=m * h * b + chunk_groups * v * h * b + m * v * b),
        "backward dH GEMM": dict(flops=gemm, bytes=m * v * b + chunks * v * h * b + m * h * b),
        "backward dW GEMM": dict(flops=gemm, bytes=m * v * b + m * h * b + chunks * 2 * v * h * 4),
    }
    for p in phases.values():
        compute_ms = p["flops"] / (arch.dense_bf16_tflops * 1e12) * 1e3
        memory_ms = p["bytes"] / (arch.hbm_tb_per_s * 1e12) * 1e3
        p.update(compute_ms=compute_ms, memory_ms=memory_ms, ms=max(compute_ms, memory_ms))
    row_major_forward_bytes = m * h * b * vocab_tiles + _cdiv(row_blocks, arch.multiprocessors) * v * h * b
    total_ms = sum(p["ms"] for p in phases.values())
    return dict(
        arch=arch.name,
        shape=dict(m=m, h=h, v=v, dtype=str(dtype).removeprefix("torch.")),
        tile=tile.as_dict(),
        forward_splits=splits,
        forward_programs=row_blocks * splits,
        forward_waves=row_blocks * splits / arch.multiprocessors,
        chunk_rows=chunk,
        phases=phases,
        row_major_forward_bytes=row_major_forward_bytes,
        fwd_ms=phases["forward"]["ms"],
        fwd_bwd_ms=total_ms,
        credited_tflops=6 * m * h * v / (total_ms * 1e-3) / 1e12,
        executed_tflops=8 * m * h * v / (total_ms * 1e-3) / 1e12,
        backward_peak_bytes=backward_peak_bytes(m, h, v, dtype, chunk),
        backward_peak_bytes_if_dw_copy_overlaps_chunk=backward_peak_bytes(
            m, h, v, dtype, chunk, overlap=True
        ),
    )


def backward_peak_bytes(m: int, h: int, v: int, dtype: torch.dtype, chunk: int, overlap: bool = False) -> int:
    """Inputs + dH + fp32 dW + the larger of (one dlogits chunk, the 16-bit dW copy made after it).

    ``overlap=True``: the chunk still alive when the dW copy is made (the order before the fix).
    """
    b = torch.finfo(dtype).bits // 8
    inputs, grad_hidden, dw32 = (m + v) * h * b, m * h * b, v * h * 4
    dlogits, dw_copy = chunk * v * b, v * h * b if b < 4 else 0
    tail = dlogits + dw_copy if overlap else max(dlogits, dw_copy)
    return inputs + grad_hidden + dw32 + tail


def summary(estimates: list[dict]) -> str:
    lines = []
    for e in estimates:
        s = e["shape"]
        lines.append(
            f"**{e['arch']}**, M={s['m']} H={s['h']} V={s['v']} {s['dtype']}, tile "
            f"{e['tile']['block_m']}x{e['tile']['block_v']}x{e['tile']['block_k']} (group {e['tile']['group_m']}), "
            f"forward {e['forward_programs']} programs = {e['forward_waves']:.1f} waves, backward chunk "
            f"{e['chunk_rows']} rows:\n"
        )
        lines.append("| phase | GFLOP | HBM GB | compute-bound ms | memory-bound ms | roofline ms |")
        lines.append("|---|---|---|---|---|---|")
        for name, p in e["phases"].items():
            lines.append(
                f"| {name} | {p['flops'] / 1e9:.0f} | {p['bytes'] / 1e9:.1f} | {p['compute_ms']:.1f} "
                f"| {p['memory_ms']:.1f} | {p['ms']:.1f} |"
            )
        lines.append(
            f"\nfwd+bwd roofline {e['fwd_bwd_ms']:.0f} ms = {e['credited_tflops']:.0f} TFLOP/s credited (6NHV), "
            f"{e['executed_tflops']:.0f} executed (8NHV). Forward HBM traffic in row-major program order "
            f"would be {e['row_major_forward_bytes'] / 1e9:.0f} GB. Backward peak memory (inputs, grads, fp32 dW, "
            f"one dlogits chunk): {e['backward_peak_bytes'] / 1e9:.2f} GB "
            f"({e['backward_peak_bytes_if_dw_copy_overlaps_chunk'] / 1e9:.2f} GB if the bf16 dW copy "
            "overlapped the chunk).\n"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m occ_fast.kernels.roofline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--m", type=int, default=TARGET["m"], help="stacked rows (default: %(default)s)")
    parser.add_argument("--h", type=int, default=TARGET["h"], help="hidden size (default: %(default)s)")
    parser.add_argument("--v", type=int, default=TARGET["v"], help="vocabulary size (default: %(default)s)")
    parser.add_argument("--write", type=Path, help="write results.json and summary.md into this directory")
    args = parser.parse_args(argv)
    for name in ("m", "h", "v"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    estimates = [estimate(tiling.ARCHS[cc], args.m, args.h, args.v) for cc in (90, 80)]
    text = (
        "Roofline estimate (datasheet peaks: H100 SXM 989 dense bf16 TFLOP/s and 3.35 TB/s, A100 SXM 312 "
        "and 2.04 TB/s; no GPU measurement): a lower bound on time, not a prediction of it.\n\n"
        + summary(estimates)
    )
    print(text)
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        (args.write / "results.json").write_text(json.dumps(estimates, indent=2) + "\n")
        (args.write / "summary.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
