"""Which kernel variant a launch runs: the pointer kernels, or one of Hopper's TMA variants.

Every variant listed here passed the compiled-code check for sm_90 with the Triton releases it
names (``tests/test_kernel_compiled.py``: TMA copies in the SASS, register re-allocation where
warp-specialised, tensor-core MMA, no spills); :func:`choose` is a pure function of kernel,
architecture, rows, dtype, entropy, input layout and Triton version, so the code a GPU runs is
code that was checked. ``OCC_FAST_KERNEL_VARIANT=<name>`` forces one variant (the GPU check
times each this way); a forced variant that cannot run these inputs is an error, never a
silent fallback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import tiling

KERNELS = ("forward", "dlogits")
POINTER = "pointer"
ENV = "OCC_FAST_KERNEL_VARIANT"


@dataclass(frozen=True)
class Variant:
    name: str
    kernel: str  # "forward" or "dlogits"
    tile: tiling.Tile
    tma: bool = False  # operands through tensor descriptors (TMA) instead of cp.async pointer loads
    warp_specialize: bool = False  # producer warp + two consumer warp groups, setmaxnreg
    flatten: bool = False  # forward: vocabulary and K loops fused, next tile's loads overlap the epilogue
    entropy: bool | None = None  # only for launches with (True) or without (False) the entropy terms
    min_triton: tuple[int, int] = (3, 6)  # the oldest release whose compiled code was checked


# Hopper, 16-bit inputs. What the compiled-code check found (triton 3.6.0, 3.7.1 and 3.9.0, sm_90):
# 128x256 tiles spill in the forward (its online softmax keeps a second 64x256 block live) and
# in dlogits with the entropy terms; warp specialisation with 64-row tiles computes each tile
# twice (both consumer warp groups take the whole tile), so short inputs keep the pointer kernel.
HOPPER = (
    Variant("tma", "forward", tiling.Tile(128, 128, 64, 8, 3), tma=True),
    Variant("tma-flat", "forward", tiling.Tile(128, 128, 64, 8, 3), tma=True, flatten=True),
    Variant("tma-ws", "forward", tiling.Tile(128, 128, 64, 4, 4), tma=True, warp_specialize=True),
    Variant("tma", "dlogits", tiling.Tile(128, 128, 64, 8, 3), tma=True),
    Variant("tma-ws", "dlogits", tiling.Tile(128, 128, 64, 4, 4), tma=True, warp_specialize=True),
    Variant(
        "tma-ws-256",
        "dlogits",
        tiling.Tile(128, 256, 64, 4, 3),
        tma=True,
        warp_specialize=True,
        entropy=False,
    ),
)
# Until a GPU has timed them (benchmarks/gpu_check.sh), the anchors' design is the default:
# TMA with a warp-specialised pipeline, and the widest tile that does not spill.
PREFERENCE = ("tma-ws-256", "tma-ws", "tma-flat", "tma", POINTER)


def triton_version(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def tma_compatible(*tensors: torch.Tensor) -> bool:
    """TMA's layout rules: unit column stride, 16-byte aligned base and row stride."""
    return all(
        t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0
        for t in tensors
    )


def candidates(
    kernel: str,
    capability: int | None,
    m: int,
    dtype: torch.dtype,
    with_entropy: bool,
    version: tuple[int, int],
) -> list[Variant]:
    """Every variant that may run this launch, the default first (forcing may pick any of them).

    ``capability`` None is the Triton interpreter: the small pointer tile by default, every
    Hopper variant when forced (the interpreter checks their arithmetic, not their schedule).
    """
    hopper = [
        v
        for v in HOPPER
        if v.kernel == kernel and version >= v.min_triton and v.entropy in (None, with_entropy)
    ]
    hopper.sort(key=lambda v: PREFERENCE.index(v.name))
    if capability is None:
        return [Variant(POINTER, kernel, tiling.INTERPRETER_TILE), *hopper]
    pointer = Variant(POINTER, kernel, tiling.choose(capability, m, dtype))
    if capability < 90 or dtype == torch.float32:
        return [pointer]
    if m < 128 * tiling.arch_for(capability).multiprocessors // 8:  # few rows: the 64-row pointer tile
        return [pointer, *hopper]
    return [*hopper, pointer]


def choose(
    kernel: str,
    capability: int,
    m: int,
    dtype: torch.dtype,
    with_entropy: bool,
    tma_ok: bool,
    version: tuple[int, int],
    forced: str | None = None,
) -> Variant:
    """The variant this launch runs: ``forced`` when given (an error if it cannot run), else the best one."""
    found = candidates(kernel, capability, m, dtype, with_entropy, version)
    usable = [v for v in found if tma_ok or not v.tma]
    if not forced:
        return usable[0]
    for v in usable:
        if v.name == forced:
            return v
    names = ", ".join(v.name for v in usable)
    raise ValueError(
        f"{ENV}={forced}: not available for the {kernel} kernel on sm_{capability} with M={m}, {dtype}, "
        f"entropy {'on' if with_entropy else 'off'}{'' if tma_ok else ', inputs not TMA-aligned'}; "
        f"available: {names}"
    )


def forced(kernel: str) -> str | None:
    """The variant ``OCC_FAST_KERNEL_VARIANT`` forces on ``kernel``: ``name`` (both kernels) or
    ``forward=name,dlogits=name`` (either may be left out)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    if "=" not in value:
        return value
    pairs = dict(part.split("=", 1) for part in value.split(","))
    unknown = set(pairs) - set(KERNELS)
    if unknown:
        raise ValueError(f"{ENV}={value}: unknown kernel {sorted(unknown)}; kernels are {', '.join(KERNELS)}")
    return pairs.get(kernel) or None
