"""The code a GPU would run, compiled ahead of time on any machine (no GPU needed).

:func:`compile_launch` compiles one :class:`~occ_fast.kernels.logprob_triton.Launch` for an NVIDIA
architecture with ``triton.compile`` and reads back what a kernel engineer checks first: the MMA
instructions (and their operand types) in the PTX, registers per thread and local-memory
spill instructions in the SASS (``cuobjdump``, bundled with Triton), shared memory, and the
CTAs per SM that registers and shared memory allow. Arguments are specialised the way Triton's
launcher does it (16-byte divisibility of pointers and integers, integers equal to 1 as
constants), so the compiled code is the code a launch with these shapes would get.

Must run without ``TRITON_INTERPRET`` (the interpreter replaces ``triton.jit`` functions).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.tools.tensor_descriptor import TensorDescriptor

from . import tiling

_TRITON_DTYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int64: "i64",
    torch.int32: "i32",
}
_WGMMA = re.compile(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)\.f32\.(\w+)\.(\w+)")
_ROW_OFFSET = re.compile(r"tt\.addptr .*: tensor<\d+x1x!tt\.ptr<\w+>>, tensor<\d+x1xi(\d+)>")
_SETMAXNREG = re.compile(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)")
_MMA_SYNC = re.compile(r"mma\.sync\.aligned\.(m\d+n\d+k\d+)\.row\.col\.f32\.(\w+)\.(\w+)\.f32")


@dataclass
class CompiledReport:
    kernel: str
    arch: int
    variant: str
    tile: str
    mma: list[str]  # distinct MMA instructions, e.g. "wgmma m64n128k16 bf16"
    registers: int
    spill_stores: int  # STL instructions in the SASS
    spill_loads: int  # LDL instructions
    stack_bytes: int
    shared_bytes: int
    shared_limit: int
    row_offsets_64: int  # pointer offsets of whole rows ([rows, 1] tensors) computed in int64
    row_offsets_32: int  # ... and in int32 (overflow once rows x stride passes 2^31)
    ctas_per_sm: int
    warps_per_sm: int
    tma_loads: int = 0  # UTMALDG instructions in the SASS (TMA copies global -> shared)
    register_realloc: list[str] = field(default_factory=list)  # setmaxnreg in the PTX, e.g. "dec 40"
    register_realloc_sass: int = 0  # USETMAXREG instructions in the SASS
    epilogue_in_mma_loop: bool = False  # the loop that issues the MMA also runs the softmax (loops fused)

    def as_dict(self) -> dict:
        return asdict(self)


def _specialise(params: list[str], args: tuple, constexprs: dict):
    """Triton's launcher specialisation of ``args``: signature, constants and divisibility attributes."""
    signature, consts, attrs = {}, {}, {}
    for i, (name, value) in enumerate(zip(params, args)):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_DTYPES[value.dtype]
            aligned = value.data_ptr() % 16 == 0
        elif isinstance(value, TensorDescriptor):
            block = ", ".join(map(str, value.block_shape))
            signature[name] = f"tensordesc<{_TRITON_DTYPES[value.base.dtype]}[{block}]>"
            continue
        elif isinstance(value, bool):
            signature[name], aligned = "i1", False
        elif isinstance(value, int):
            if value == 1:
                signature[name], consts[(i,)] = "constexpr", 1
                continue
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            aligned = value % 16 == 0
        else:
            raise TypeError(f"argument {name}: cannot specialise {type(value).__name__}")
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    for i, name in enumerate(params[len(args) :], start=len(args)):
        signature[name] = "constexpr"
        consts[(i,)] = constexprs[name]
    return signature, consts, attrs


def _tool(name: str) -> str:
    import triton.backends.nvidia as nvidia

    return str(Path(nvidia.__file__).parent / "bin" / name)


def _sass_and_resources(cubin: bytes) -> tuple[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        Path(path).write_bytes(cubin)
        usage = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run(
            [_tool("cuobjdump"), "-sass", path], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"(\w+):(\d+)", usage.split("Function", 1)[1]))
    return sass, {k: int(v) for k, v in fields.items()}


def _mma_instructions(ptx: str, arch: int) -> list[str]:
    pattern = _WGMMA if arch >= 90 else _MMA_SYNC
    kind = "wgmma" if arch >= 90 else "mma.sync"
    return sorted({f"{kind} {shape} {a}x{b}" for shape, a, b in pattern.findall(ptx)})


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _epilogue_in_mma_loop(ttgir: str) -> bool:
    """Whether a loop that issues ``warp_group_dot`` also runs an ``exp`` (the vocabulary and K loops fused).

    Unfused, the MMA sits in the K loop and the softmax after it, in the vocabulary loop; fused
    (``tl.range(..., flatten=True)``), one pipelined loop holds both, so the loads of the next
    tile are issued before this tile's epilogue runs.
    """
    lines = ttgir.splitlines()
    for i, line in enumerate(lines):
        if "ttng.warp_group_dot " not in line:
            continue
        depth, j = _indent(line), i - 1
        while j >= 0 and not (_indent(lines[j]) < depth and "scf.for" in lines[j]):
            if lines[j].strip() and _indent(lines[j]) < depth:
                depth = _indent(lines[j])
            j -= 1
        if j < 0:
            continue
        k = j + 1
        while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) > _indent(lines[j])):
            if "math.exp" in lines[k]:
                return True
            k += 1
    return False


def _occupancy(arch: tiling.Arch, registers: int, shared: int, num_warps: int) -> int:
    regs_per_warp = -(-registers * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = arch.regs_per_sm // (regs_per_warp * num_warps)
    by_smem = arch.smem_per_sm // (shared + 1024) if shared else arch.max_ctas_per_sm  # 1 KB reserved per CTA
    by_threads = arch.max_threads_per_sm // (32 * num_warps)
    return max(0, min(by_regs, by_smem, by_threads, arch.max_ctas_per_sm))


def compile_launch(launch, arch: int, variant: str) -> CompiledReport:
    """Compile ``launch`` (a :class:`Launch`) for ``sm_<arch>`` and report its resources."""
    kernel = launch.kernel
    params = [p.name for p in kernel.params]
    constexprs = {**launch.constexprs, **launch.tile.launch_options()}
    signature, consts, attrs = _specialise(params, launch.args, constexprs)
    source = ASTSource(kernel, signature, constexprs=consts, attrs=attrs)
    options = dict(num_warps=launch.tile.num_warps, num_stages=launch.tile.num_stages)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    sass, usage = _sass_and_resources(compiled.asm["cubin"])
    spec = tiling.arch_for(arch)
    shared = compiled.metadata.shared
    warps = compiled.metadata.num_warps  # warp specialisation adds a producer warp group to the tile's warps
    ctas = _occupancy(spec, usage["REG"], shared, warps)
    t = launch.tile
    row_offset_bits = _ROW_OFFSET.findall(compiled.asm["ttir"])
    return CompiledReport(
        kernel=kernel.__name__.strip("_"),
        arch=arch,
        variant=variant,
        tile=f"{t.block_m}x{t.block_v}x{t.block_k} w{t.num_warps} s{t.num_stages}",
        mma=_mma_instructions(compiled.asm["ptx"], arch),
        registers=usage["REG"],
        spill_stores=len(re.findall(r"\bSTL\b", sass)),
        spill_loads=len(re.findall(r"\bLDL\b", sass)),
        stack_bytes=usage.get("STACK", 0),
        shared_bytes=shared,
        shared_limit=spec.smem_per_block,
        row_offsets_64=row_offset_bits.count("64"),
        row_offsets_32=row_offset_bits.count("32"),
        ctas_per_sm=ctas,
        warps_per_sm=ctas * warps,
        tma_loads=len(re.findall(r"\bUTMALDG\b", sass)),
        register_realloc=sorted({f"{op} {n}" for op, n in _SETMAXNREG.findall(compiled.asm["ptx"])}),
        register_realloc_sass=len(re.findall(r"\bUSETMAXREG\b", sass)),
        epilogue_in_mma_loop=_epilogue_in_mma_loop(compiled.asm["ttgir"]),
    )
