"""Print the compiled-code table of the log-prob kernels for any shape and architecture.

    python -m occ_fast.kernels.inspect                       # target shape, sm_90 and sm_80
    python -m occ_fast.kernels.inspect --m 4096 --h 2048 --v 32000 --arch 90 --dtype bf16
    python -m occ_fast.kernels.inspect --all-tiles --json    # every candidate tile, as JSON

For each kernel (forward, backward ``dlogits``), each variant (entropy on/off, dtype) and each
architecture: the MMA instructions, registers, spills, shared memory and CTAs per SM of the code
Triton generates for a launch at that shape. Needs no GPU (tensors are on the meta device);
runs without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from . import tiling

TARGET = dict(m=32768, h=4096, v=151936)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def launches(m: int, h: int, v: int, dtype: torch.dtype, arch: int, all_tiles: bool) -> Iterator:
    """``(variant, Launch)`` for every kernel and entropy setting at this shape (meta tensors).

    The pointer kernels at every candidate tile (or the chosen one), then Hopper's TMA variants
    (every one :func:`.variants.candidates` may pick, or the chosen one) with their names.
    """
    import triton

    from . import hopper, variants
    from .logprob import default_chunk_rows
    from .logprob_triton import dlogits_launch, forward_launch, forward_splits

    spec = tiling.arch_for(arch)
    meta = dict(device="meta")
    hidden = torch.empty(m, h, dtype=dtype, **meta)
    weight = torch.empty(v, h, dtype=dtype, **meta)
    targets = torch.empty(m, dtype=torch.int64, **meta)
    rows = torch.empty(m, dtype=torch.float32, **meta)
    chunk = min(m, default_chunk_rows("triton", weight))
    out = torch.empty(chunk, v, dtype=dtype, **meta)

    def forward(tile, entropy):
        partial = torch.empty(
            4, forward_splits(m, v, tile, spec.multiprocessors), m, dtype=torch.float32, **meta
        )
        return (hidden, weight, targets, rows, partial, entropy)

    def dlogits(entropy):
        ent = rows[:chunk] if entropy else None
        return (hidden[:chunk], weight, targets[:chunk], rows[:chunk], rows[:chunk], rows[:chunk], ent,
                rows[:chunk], rows[:chunk], out)  # fmt: skip

    def tag(entropy):
        return f"{_dtype_name(dtype)} entropy={'on' if entropy else 'off'}"

    tiles = tiling.candidates(arch, dtype) if all_tiles else (tiling.choose(arch, m, dtype),)
    for tile in tiles:
        for entropy in (True, False):
            yield tag(entropy), forward_launch(*forward(tile, entropy), tile, spec.multiprocessors)
            yield f"{tag(entropy)} chunk={chunk}", dlogits_launch(*dlogits(entropy), tile)
    version = variants.triton_version(triton.__version__)
    for entropy in (True, False):
        for kernel, rows_ in (("forward", m), ("dlogits", chunk)):
            found = variants.candidates(kernel, arch, rows_, dtype, entropy, version)
            chosen = found if all_tiles else found[:1]
            for var in (c for c in chosen if c.tma):
                if kernel == "forward":
                    launch = hopper.forward_launch(*forward(var.tile, entropy), var, spec.multiprocessors)
                    yield f"{tag(entropy)} {var.name}", launch
                else:
                    yield (
                        f"{tag(entropy)} chunk={chunk} {var.name}",
                        hopper.dlogits_launch(*dlogits(entropy), var),
                    )


def _dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, d in DTYPES.items() if d == dtype)


def reports(m: int, h: int, v: int, archs, dtypes, all_tiles: bool) -> list:
    from .compiled import compile_launch

    return [
        compile_launch(launch, arch, variant)
        for arch in archs
        for dtype in dtypes
        for variant, launch in launches(m, h, v, dtype, arch, all_tiles)
    ]


def problems(report) -> list[str]:
    """What is wrong with one compiled kernel: no 16-bit/TF32 tensor-core MMA, spills, too much shared memory."""
    found = []
    wanted = "wgmma" if report.arch >= 90 else "mma.sync"
    operands = {"bf16": "bf16xbf16", "fp16": "f16xf16", "fp32": "tf32xtf32"}[report.variant.split()[0]]
    if not report.mma or any(not (i.startswith(wanted) and i.endswith(operands)) for i in report.mma):
        found.append(f"MMA {report.mma}, want {wanted} with {operands} operands")
    if report.spill_stores or report.spill_loads or report.stack_bytes:
        found.append(
            f"spills: {report.spill_stores} STL, {report.spill_loads} LDL, {report.stack_bytes} B stack"
        )
    if report.shared_bytes > report.shared_limit:
        found.append(f"shared memory {report.shared_bytes} > {report.shared_limit}")
    tma = "_tma_" in f"_{report.kernel}_"
    if report.row_offsets_32 or not (report.row_offsets_64 or tma):
        found.append(f"row offsets: {report.row_offsets_32} in int32, {report.row_offsets_64} in int64")
    if tma != (report.tma_loads > 0):
        found.append(f"{report.tma_loads} TMA loads (UTMALDG) in a {'TMA' if tma else 'pointer'} kernel")
    if report.variant.split()[-1].startswith("tma-ws") and not (
        {r.split()[0] for r in report.register_realloc} == {"inc", "dec"} and report.register_realloc_sass
    ):
        found.append(f"warp-specialised without register re-allocation: setmaxnreg {report.register_realloc}")
    if report.variant.split()[-1] == "tma-flat" and not report.epilogue_in_mma_loop:
        found.append("flattened, but the MMA loop does not hold the epilogue (loops not fused)")
    if report.ctas_per_sm < 1:
        found.append("does not fit on an SM")
    return found


def table(rows: list) -> str:
    """A plain-text (markdown) table of compiled-kernel reports."""
    head = (
        "| arch | kernel | variant | tile | MMA | regs | spills (STL/LDL) | smem KB | CTAs/SM | warps/SM "
        "| TMA loads (UTMALDG) | setmaxnreg |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| sm_{r.arch} | {r.kernel} | {r.variant} | {r.tile} | {', '.join(r.mma) or 'none'} | {r.registers} "
            f"| {r.spill_stores}/{r.spill_loads} | {r.shared_bytes / 1024:.0f} | {r.ctas_per_sm} | {r.warps_per_sm} "
            f"| {r.tma_loads} | {', '.join(r.register_realloc) or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m occ_fast.kernels.inspect", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--m", type=int, default=TARGET["m"], help="stacked rows (default: %(default)s)")
    parser.add_argument("--h", type=int, default=TARGET["h"], help="hidden size (default: %(default)s)")
    parser.add_argument("--v", type=int, default=TARGET["v"], help="vocabulary size (default: %(default)s)")
    parser.add_argument(
        "--arch", type=int, nargs="+", default=[90, 80], help="sm_XX targets (default: 90 80)"
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=sorted(DTYPES),
        default=["bf16", "fp16"],
        help="input dtypes (default: bf16 fp16)",
    )
    parser.add_argument(
        "--all-tiles", action="store_true", help="every candidate tile, not only the chosen one"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--write", type=Path, help="also write results.json and summary.md into this directory"
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels this command compiles")
    for a in args.arch:
        if a not in (80, 86, 89, 90):
            parser.error(f"--arch {a}: supported targets are 80, 86, 89, 90")
    rows = reports(args.m, args.h, args.v, args.arch, [DTYPES[d] for d in args.dtype], args.all_tiles)
    bad = {i: problems(r) for i, r in enumerate(rows) if problems(r)}
    if args.json:
        print(json.dumps([dict(r.as_dict(), problems=bad.get(i, [])) for i, r in enumerate(rows)], indent=2))
    else:
        print(f"M={args.m} H={args.h} V={args.v}, triton {_triton_version()}")
        print(table(rows))
        for i, found in bad.items():
            print(
                f"PROBLEM sm_{rows[i].arch} {rows[i].kernel} {rows[i].variant} {rows[i].tile}: {'; '.join(found)}"
            )
    if args.write:
        write(args.write, rows, dict(m=args.m, h=args.h, v=args.v))
    return 1 if bad else 0


def _triton_version() -> str:
    import triton

    return triton.__version__


def write(directory: Path, rows: list, shape: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    payload = dict(shape=shape, triton=_triton_version(), kernels=[r.as_dict() for r in rows])
    (directory / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    summary = (
        f"Compiled ahead of time with triton {payload['triton']} (no GPU) at M={shape['m']}, "
        f"H={shape['h']}, V={shape['v']}; every candidate tile of each architecture:\n\n{table(rows)}\n"
    )
    (directory / "summary.md").write_text(summary)


if __name__ == "__main__":
    sys.exit(main())
