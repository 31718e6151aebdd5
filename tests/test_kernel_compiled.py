"""The code a GPU would run: every kernel variant compiled ahead of time for sm_90 and sm_80.

At the target shape (M = 32768 stacked rows, H = 4096, V = 151936), for both kernels, entropy on
and off, bf16/fp16/fp32 and every tile the launcher may choose: tensor-core MMA (wgmma on sm_90,
mma.sync on sm_80) with 16-bit operands (TF32 for fp32 inputs), no local-memory spill
instruction, shared memory within the per-block limit, at least one CTA per SM, and 64-bit row
offsets (``rows x stride`` passes 2^31 at this shape: the backward's dlogits chunk alone is
3456 x 151936). Hopper's variants (``kernels/src/hopper.py``, picked by ``variants.choose``) must
also show what they are for: TMA copies (UTMALDG) in the SASS, register re-allocation
(setmaxnreg) where warp-specialised, the epilogue inside the MMA loop where flattened, and the
128x256 tile only where it does not spill. Compiled by ``python -m occ_fast.kernels.inspect`` in
fresh processes (the test session runs the Triton interpreter, which replaces the kernels), one
per architecture, early, as a background job (``tests/background.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import background
import pytest
import torch

from occ_fast.kernels import tiling, variants

ARCHS = (90, 80)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPERANDS = {"bf16": "bf16xbf16", "fp16": "f16xf16", "fp32": "tf32xtf32"}
TARGET_ROWS = 32768


def compile_all(directory: Path) -> list[subprocess.CompletedProcess] | None:
    """``python -m occ_fast.kernels.inspect --all-tiles --json`` for each of ``ARCHS`` (None without
    Triton's NVIDIA backend, where the tests are skipped)."""
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        return None
    env = {k: v for k, v in background.ENV.items() if k != "TRITON_INTERPRET"}
    return [
        background.run(
            [
                sys.executable,
                "-W",
                "ignore",
                "-m",
                "occ_fast.kernels.inspect",
                "--arch",
                str(arch),
                "--dtype",
                *DTYPES,
                "--all-tiles",
                "--json",
            ],
            env=env,
            timeout=600,
        )  # fmt: skip
        for arch in ARCHS
    ]


pytestmark = pytest.mark.background(job=compile_all)


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    pytest.importorskip("triton.backends.nvidia", reason="Triton's NVIDIA backend is not installed")
    rows = []
    for done in background.result(compile_all):
        assert done.stdout.strip(), done.stderr[-3000:]
        rows += json.loads(done.stdout)
    from occ_fast.kernels.compiled import CompiledReport
    from occ_fast.kernels.inspect import table

    print("\n" + table([CompiledReport(**{k: v for k, v in r.items() if k != "problems"}) for r in rows]))
    return rows


def test_every_launched_variant_is_compiled(compiled):
    got = {
        (r["arch"], r["kernel"], r["variant"].split()[0], r["variant"].split()[1], r["tile"])
        for r in compiled
    }
    for arch in ARCHS:
        for name, dtype in DTYPES.items():
            tiles = tiling.candidates(arch, dtype)
            assert (
                tiling.choose(arch, TARGET_ROWS, dtype) in tiles and tiling.choose(arch, 64, dtype) in tiles
            )
            for t in tiles:
                tile = f"{t.block_m}x{t.block_v}x{t.block_k} w{t.num_warps} s{t.num_stages}"
                for kernel in ("forward_kernel", "dlogits_kernel"):
                    for entropy in ("entropy=on", "entropy=off"):
                        assert (arch, kernel, name, entropy, tile) in got


def test_every_hopper_variant_the_rule_may_pick_is_compiled(compiled):
    """Each TMA variant :func:`variants.choose` may return at the target shape, by name, entropy on and off."""
    import triton

    got = {(r["arch"], r["kernel"], r["variant"].split()[0], r["variant"].split()[1], r["variant"].split()[-1])
           for r in compiled}  # fmt: skip
    version = variants.triton_version(triton.__version__)
    expected = 0
    for arch in ARCHS:
        for name, dtype in DTYPES.items():
            for entropy in (True, False):
                for kernel in variants.KERNELS:
                    for v in variants.candidates(kernel, arch, TARGET_ROWS, dtype, entropy, version):
                        if v.tma:
                            expected += 1
                            on = "entropy=on" if entropy else "entropy=off"
                            assert (arch, f"{kernel}_tma_kernel", name, on, v.name) in got
    assert expected == 2 * (3 + 2 + 3 + 3)  # (bf16, fp16) x forward and dlogits, entropy on and off (sm_90)


def test_tensor_core_mma_with_narrow_operands(compiled):
    for r in compiled:
        want = "wgmma" if r["arch"] >= 90 else "mma.sync"
        operands = OPERANDS[r["variant"].split()[0]]
        assert r["mma"], f"no MMA in {r['kernel']} {r['variant']} sm_{r['arch']}"
        for instr in r["mma"]:
            assert instr.startswith(want) and instr.endswith(operands), (r["arch"], r["variant"], instr)


def test_no_register_spills(compiled):
    for r in compiled:
        where = f"{r['kernel']} {r['variant']} {r['tile']} sm_{r['arch']}"
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack_bytes"] == 0, where
        assert r["registers"] <= 255, where


def test_shared_memory_and_occupancy(compiled):
    for r in compiled:
        assert 0 < r["shared_bytes"] <= r["shared_limit"], (r["kernel"], r["variant"], r["tile"])
        assert r["ctas_per_sm"] >= 1


def test_row_offsets_are_64_bit(compiled):
    """Hidden and weight row offsets (and the dlogits store) in int64: none left in int32.

    The TMA kernels address ``hidden`` and ``weight`` through descriptors (64-bit addresses in
    the copy unit); only their dlogits store is pointer arithmetic.
    """
    wanted = {"dlogits_kernel": 3, "forward_kernel": 2, "dlogits_tma_kernel": 1, "forward_tma_kernel": 0}
    for r in compiled:
        assert r["row_offsets_64"] >= wanted[r["kernel"]] and r["row_offsets_32"] == 0, (
            r["kernel"],
            r["variant"],
        )


def test_tma_variants_copy_through_tma_and_pointer_kernels_do_not(compiled):
    """UTMALDG (TMA global-to-shared copies) in the SASS of every TMA variant, none in the cp.async kernels."""
    for r in compiled:
        where = f"{r['kernel']} {r['variant']} sm_{r['arch']}"
        if r["kernel"].endswith("_tma_kernel"):
            assert r["arch"] >= 90 and r["tma_loads"] >= 2, where
        else:
            assert r["tma_loads"] == 0, where


def test_warp_specialised_variants_reallocate_registers(compiled):
    """A producer warp group gives registers up (setmaxnreg.dec), the MMA warp groups take them (inc)."""
    ws = [r for r in compiled if r["variant"].split()[-1].startswith("tma-ws")]
    assert ws
    for r in compiled:
        where = f"{r['kernel']} {r['variant']}"
        if r in ws:
            assert {x.split()[0] for x in r["register_realloc"]} == {"inc", "dec"}, where
            assert "inc 232" in r["register_realloc"] and r["register_realloc_sass"] > 0, where
            assert r["warps_per_sm"] == 12, where  # 4 + 4 MMA warps, 4 producer warps (one CTA)
        else:
            assert not r["register_realloc"] and not r["register_realloc_sass"], where


def test_flattened_forward_runs_its_epilogue_in_the_mma_loop(compiled):
    """``tma-flat`` fuses the vocabulary and K loops (next tile's loads issued before the epilogue); no other variant does."""
    for r in compiled:
        flat = r["variant"].split()[-1] == "tma-flat"
        assert r["epilogue_in_mma_loop"] == flat, (r["kernel"], r["variant"])


def test_wide_tile_only_where_it_does_not_spill(compiled):
    """The 128x256 tile runs m64n256 wgmma, and is offered only for dlogits without the entropy terms."""
    wide = [r for r in compiled if r["tile"].startswith("128x256")]
    assert wide and all(r["variant"].split()[-1] == "tma-ws-256" for r in wide)
    for r in wide:
        assert r["kernel"] == "dlogits_tma_kernel" and "entropy=off" in r["variant"]
        assert r["mma"][0].startswith("wgmma m64n256k16")


def test_committed_table_is_current(compiled):
    """benchmarks/results/kernel-compiled (shown in the README) is what this Triton compiles now."""
    import triton

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "kernel-compiled" / "results.json"
    committed = json.loads(path.read_text())
    if committed["triton"] != triton.__version__:
        pytest.skip(f"results written with triton {committed['triton']}, this is {triton.__version__}")
    assert committed["kernels"] == [{k: v for k, v in r.items() if k != "problems"} for r in compiled]
