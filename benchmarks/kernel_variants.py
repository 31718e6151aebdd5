"""Every variant of the two log-prob kernels, timed on this GPU, so that the first run picks the winner.

    python benchmarks/kernel_variants.py [--out benchmarks/results/gpu/kernel-variants] [--dry-run]

At the target shape (M = 32768 rows, H = 4096, V = 151936, bf16; the backward's ``dlogits`` on one
chunk of rows), entropy on and off: each variant :func:`occ_fast.kernels.variants.candidates` offers
on this GPU (the pointer kernel, and on sm_90 the TMA, flattened, warp-specialised and 128x256
variants), forced in turn through ``OCC_FAST_KERNEL_VARIANT``. Reports the median time, TFLOP/s
(2NHV per kernel) and the fraction of a bf16 matmul measured in the same run, checks each
variant's output against the pointer kernel's, and marks the fastest correct variant beside the one
the rule picks today. ``--dry-run`` (or no CUDA device) lists what would be timed, for sm_90.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

M, H, V = 32768, 4096, 151936
DTYPE = torch.bfloat16


def plan(capability: int) -> list[tuple[str, bool, object]]:
    """``(kernel, entropy, variant)`` for every variant this GPU would time, the rule's pick first."""
    import triton

    from occ_fast.kernels import variants
    from occ_fast.kernels.logprob import default_chunk_rows

    chunk = default_chunk_rows("triton", torch.empty(V, H, dtype=DTYPE, device="meta"))
    version = variants.triton_version(triton.__version__)
    return [
        (kernel, entropy, v)
        for kernel in variants.KERNELS
        for entropy in (True, False)
        for v in variants.candidates(
            kernel, capability, M if kernel == "forward" else chunk, DTYPE, entropy, version
        )
    ]


def describe(kernel: str, entropy: bool, v) -> str:
    t = v.tile
    return f"{kernel} entropy={'on' if entropy else 'off'} {v.name} {t.block_m}x{t.block_v}x{t.block_k} w{t.num_warps} s{t.num_stages}"


def _inputs():
    from occ_fast.kernels.logprob import default_chunk_rows

    torch.manual_seed(0)
    hidden = (torch.randn(M, H, device="cuda") / H**0.5).to(DTYPE)
    weight = torch.randn(V, H, device="cuda").to(DTYPE)
    targets = torch.randint(0, V, (M,), device="cuda")
    inv_temp = torch.ones(M, device="cuda")
    chunk = default_chunk_rows("triton", weight)
    return hidden, weight, targets, inv_temp, chunk


def _caller(kernel: str, entropy: bool, hidden, weight, targets, inv_temp, chunk):
    """``(rows, call)``: one launch of ``kernel`` at the target shape; ``call()`` returns its outputs."""
    from occ_fast.kernels import logprob_triton

    if kernel == "forward":
        return M, lambda: logprob_triton.triton_forward(hidden, weight, targets, inv_temp, entropy)
    rows = slice(0, chunk)
    row_max, log_sumexp, _, ent = logprob_triton.triton_forward(
        hidden[rows], weight, targets[rows], inv_temp[rows], True
    )
    g = torch.randn(
        chunk, device="cuda", generator=torch.Generator("cuda").manual_seed(1)
    )  # same for every variant
    buf = torch.empty(chunk, V, dtype=DTYPE, device="cuda")

    def call():
        logprob_triton.triton_dlogits(
            hidden[rows], weight, targets[rows], inv_temp[rows], row_max, log_sumexp,
            ent if entropy else None, g, g if entropy else None, buf,
        )  # fmt: skip
        return (buf,)

    return chunk, call


def measure(out_dir: Path) -> dict:
    from harness import device_name, matmul_peak_tflops, median_ms
    from occ_fast.kernels import variants

    major, minor = torch.cuda.get_device_capability()
    hidden, weight, targets, inv_temp, chunk = _inputs()
    peak = matmul_peak_tflops()
    rows, reference = [], {}
    for kernel, entropy, v in plan(10 * major + minor):
        os.environ[variants.ENV] = f"{kernel}={v.name}"
        try:
            n, call = _caller(kernel, entropy, hidden, weight, targets, inv_temp, chunk)
            result = [t.float() for t in call() if t is not None]
            ms = median_ms(call, repeats=10)
        except Exception as exc:  # a variant that fails to compile or launch here is a finding, not a stop
            error = f"{type(exc).__name__}: {exc}"
            rows.append(dict(kernel=kernel, entropy=entropy, variant=v.name, error=error))
            continue
        finally:
            os.environ.pop(variants.ENV, None)
        if v.name == variants.POINTER:  # every plan ends with the pointer kernel
            reference[(kernel, entropy)] = result
        tflops = 2 * n * H * V / (ms * 1e-3) / 1e12
        tile = describe(kernel, entropy, v).split()[3]
        rows.append(dict(kernel=kernel, entropy=entropy, variant=v.name, tile=tile, ms=ms, tflops=tflops,
                         of_matmul_peak=tflops / peak, result=result))  # fmt: skip
    for r in rows:
        if "result" in r:
            pairs = zip(r.pop("result"), reference[(r["kernel"], r["entropy"])])
            r["max_abs_diff_vs_pointer"] = max((a - b).abs().max().item() for a, b in pairs)
    payload = dict(device=device_name(), shape=dict(m=M, h=H, v=V, dlogits_rows=chunk), matmul_peak_tflops=peak,
                   rows=rows)  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "summary.md").write_text(summary(payload))
    return payload


def summary(payload: dict) -> str:
    lines = [
        f"Kernel variants on {payload['device']}, M={payload['shape']['m']} (dlogits: {payload['shape']['dlogits_rows']} "
        f"rows) H={payload['shape']['h']} V={payload['shape']['v']} bf16; matmul peak measured in the same run "
        f"{payload['matmul_peak_tflops']:.0f} TFLOP/s. First row of each group: the rule's pick today.",
        "",
        "| kernel | entropy | variant | tile | ms | TFLOP/s | of matmul peak | max abs diff vs pointer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        on = "on" if r["entropy"] else "off"
        if "error" in r:
            lines.append(
                f"| {r['kernel']} | {on} | {r['variant']} | - | failed: {r['error'][:80]} | - | - | - |"
            )
            continue
        lines.append(
            f"| {r['kernel']} | {on} | {r['variant']} | {r['tile']} | {r['ms']:.2f} | {r['tflops']:.0f} "
            f"| {r['of_matmul_peak']:.0%} | {r['max_abs_diff_vs_pointer']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "gpu" / "kernel-variants"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be timed (for sm_90), time nothing"
    )
    args = parser.parse_args(argv)
    if args.dry_run or not torch.cuda.is_available():
        for kernel, entropy, v in plan(90):
            print(f"kernel_variants would time: {describe(kernel, entropy, v)}")
        if not torch.cuda.is_available():
            print("SKIPPED kernel_variants: no CUDA device")
        return 0
    payload = measure(args.out)
    print(summary(payload))
    return 1 if any("error" in r for r in payload["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
