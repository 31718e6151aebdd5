"""Tile configurations of the Triton log-prob kernels, per GPU architecture.

Each architecture has a short candidate list (every entry is compiled ahead of time for that
architecture by ``tests/test_kernel_compiled.py`` and must use tensor-core MMA without register
spills and fit in shared memory); :func:`choose` picks one per call from ``(arch, M, dtype)``,
deterministically, so the code a GPU runs is the code that was checked. Under the Triton interpreter (CPU) a small tile keeps the tests fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Tile:
    block_m: int
    block_v: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8  # row blocks per group of the grouped (L2-friendly) program order

    def launch_options(self) -> dict:
        return dict(
            BLOCK_M=self.block_m,
            BLOCK_V=self.block_v,
            BLOCK_K=self.block_k,
            GROUP_M=self.group_m,
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Arch:
    """What the occupancy and roofline arithmetic needs to know about one GPU."""

    name: str
    capability: int  # 90 = sm_90
    multiprocessors: int
    smem_per_sm: int  # bytes
    smem_per_block: int  # bytes, the most one CTA may use
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_ctas_per_sm: int = 32
    dense_bf16_tflops: float = 0.0  # datasheet, dense
    hbm_tb_per_s: float = 0.0
    l2_mb: float = 0.0


ARCHS = {
    90: Arch(
        "H100 SXM", 90, 132, 228 * 1024, 227 * 1024, dense_bf16_tflops=989.0, hbm_tb_per_s=3.35, l2_mb=50
    ),
    80: Arch(
        "A100 SXM", 80, 108, 164 * 1024, 163 * 1024, dense_bf16_tflops=312.0, hbm_tb_per_s=2.04, l2_mb=40
    ),
}

# 16-bit inputs. Hopper: two warp groups of wgmma m64n128k16 on a 128x128 fp32 accumulator,
# 3 stages (4 make the forward-with-entropy spill). Ampere: mma.sync, 4 shallow stages.
# The 64-row tiles serve few rows (short rollouts) with two CTAs per SM.
_HALF = {
    90: (Tile(128, 128, 64, 8, 3), Tile(64, 128, 64, 4, 3)),
    80: (Tile(128, 128, 32, 8, 4), Tile(64, 128, 64, 4, 3)),
}
# fp32 inputs (3xTF32 tensor-core products): 4-byte operands halve the K depth per stage; on
# Ampere the three mma.sync operand splits live in registers, so the tiles are narrower.
_FLOAT = {
    90: (Tile(128, 128, 32, 8, 3), Tile(64, 128, 32, 4, 3)),
    80: (Tile(128, 64, 16, 8, 3), Tile(64, 64, 32, 4, 3)),
}
INTERPRETER_TILE = Tile(32, 64, 32, 4, 1, group_m=2)


def candidates(capability: int, dtype: torch.dtype) -> tuple[Tile, ...]:
    """Every tile :func:`choose` may return for this architecture and input dtype."""
    table = _FLOAT if dtype == torch.float32 else _HALF
    return table[90 if capability >= 90 else 80]


def arch_for(capability: int) -> Arch:
    return ARCHS[90 if capability >= 90 else 80]


def choose(capability: int, m: int, dtype: torch.dtype) -> Tile:
    """The tile a launch of ``M`` rows uses on this architecture, for this input dtype.

    Full 128-row tiles once there are enough row blocks to fill the GPU with vocabulary splits
    (the forward splits the vocabulary across programs); 64-row tiles for short inputs (fewer
    than 1/8 of a row block per SM), which leave registers for two CTAs per SM.
    """
    big, small = candidates(capability, dtype)
    return small if m < 128 * arch_for(capability).multiprocessors // 8 else big
