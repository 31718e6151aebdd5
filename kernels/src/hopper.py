"""The log-prob kernels on Hopper's fast path: TMA loads, warp specialisation, wide tiles.

The same contract and math as :mod:`.logprob_triton` (online log-sum-exp, target gather and
entropy in fp32 over ``(row block, vocabulary slice)`` programs in grouped order; the backward's
``dlogits`` tile), through the very same epilogues (its ``@triton.jit`` helpers
``_online_softmax_step``, ``_store_partials`` and ``_store_dlogits``, inlined by Triton), with the
operand loads through tensor descriptors built on the device: the Tensor Memory Accelerator copies
each ``[BLOCK, BLOCK_K]`` box of ``hidden`` and ``weight`` into shared memory, zero-filled past the
edges (no masks, no address arithmetic in the K loop). A
:class:`~.variants.Variant` adds, on top of that:

- ``warp_specialize``: the outer loop (the forward's vocabulary loop, dlogits' K loop) is
  warp-specialised: a producer warp group issues the TMA copies and runs ahead, two consumer warp
  groups take 64 rows each, and registers move from producer to consumers (``setmaxnreg``).
  Descriptors are built in the kernel because Triton splits the ``hidden`` box between the
  consumers, which a host-built descriptor's fixed box does not allow;
- ``flatten`` (forward): the vocabulary and K loops are fused into one pipelined loop, so the
  next tile's copies are issued before this tile's softmax epilogue runs;
- a 128x256 tile: half the ``hidden`` reloads per logit (dlogits without the entropy terms only:
  elsewhere it spills).

TMA needs a unit column stride and 16-byte aligned bases and row strides; :func:`.variants.choose`
sends other inputs to the pointer kernels. Row coordinates are 32-bit but the copy unit computes
addresses in 64 bits, so ``rows x stride`` may pass 2^31.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .logprob_triton import (
    _MASKED_LOGIT,
    Launch,
    _grouped_program,
    _online_softmax_step,
    _store_dlogits,
    _store_partials,
    dot_precision,
    forward_v_per_split,
)


@triton.jit
def _logit_tile_tma(
    h_desc,
    w_desc,
    row0,
    col0,
    H,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    """``hidden[row0:] @ weight[col0:].T`` as an fp32 ``[BLOCK_M, BLOCK_V]`` tile (zero past the edges)."""
    acc = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
    for k0 in tl.range(0, H, BLOCK_K, warp_specialize=WARP_SPECIALIZE):
        h = h_desc.load([row0, k0])
        w = w_desc.load([col0, k0])
        acc = tl.dot(h, w.T, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _descriptors(
    hidden_ptr,
    weight_ptr,
    M,
    V,
    H,
    stride_hm,
    stride_wv,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    h_desc = tl.make_tensor_descriptor(hidden_ptr, [M, H], [stride_hm, 1], [BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(weight_ptr, [V, H], [stride_wv, 1], [BLOCK_V, BLOCK_K])
    return h_desc, w_desc


@triton.jit
def _forward_tma_kernel(
    hidden_ptr,
    weight_ptr,
    targets_ptr,
    inv_temp_ptr,
    max_ptr,
    sumexp_ptr,
    sumexp_shifted_ptr,
    target_logit_ptr,
    M,
    V,
    H,
    V_PER_SPLIT,
    SPLITS,
    stride_hm,
    stride_wv,
    stride_t,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    FLATTEN: tl.constexpr,
):
    h_desc, w_desc = _descriptors(
        hidden_ptr, weight_ptr, M, V, H, stride_hm, stride_wv, BLOCK_M, BLOCK_V, BLOCK_K
    )
    pid_m, pid_split = _grouped_program(tl.program_id(0), tl.cdiv(M, BLOCK_M), SPLITS, GROUP_M)
    row0 = pid_m * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    targets = tl.load(targets_ptr + offs_m.to(tl.int64) * stride_t, mask=row_ok, other=-1)
    inv_temp = tl.load(inv_temp_ptr + offs_m, mask=row_ok, other=1.0)

    v_begin = pid_split * V_PER_SPLIT
    v_end = tl.minimum(v_begin + V_PER_SPLIT, V)
    run_max = tl.full([BLOCK_M], _MASKED_LOGIT, tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    run_sum_shifted = tl.zeros([BLOCK_M], tl.float32)
    target_logit = tl.zeros([BLOCK_M], tl.float32)
    for v0 in tl.range(v_begin, v_end, BLOCK_V, warp_specialize=WARP_SPECIALIZE, flatten=FLATTEN):
        acc = _logit_tile_tma(h_desc, w_desc, row0, v0, H, BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION, False)
        offs_v = v0 + tl.arange(0, BLOCK_V)
        col_ok = offs_v < v_end
        run_max, run_sum, run_sum_shifted, target_logit = _online_softmax_step(
            acc, offs_v, col_ok, targets, inv_temp, run_max, run_sum, run_sum_shifted, target_logit,
            WITH_ENTROPY,
        )  # fmt: skip

    _store_partials(
        max_ptr, sumexp_ptr, sumexp_shifted_ptr, target_logit_ptr, pid_split, M, offs_m, row_ok,
        run_max, run_sum, run_sum_shifted, target_logit, WITH_ENTROPY,
    )  # fmt: skip


@triton.jit
def _dlogits_tma_kernel(
    hidden_ptr,
    weight_ptr,
    targets_ptr,
    inv_temp_ptr,
    row_max_ptr,
    log_sumexp_ptr,
    entropy_ptr,
    g_logprob_ptr,
    g_entropy_ptr,
    dlogits_ptr,
    M,
    V,
    H,
    stride_hm,
    stride_wv,
    stride_t,
    stride_dm,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    h_desc, w_desc = _descriptors(
        hidden_ptr, weight_ptr, M, V, H, stride_hm, stride_wv, BLOCK_M, BLOCK_V, BLOCK_K
    )
    pid_m, pid_v = _grouped_program(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(V, BLOCK_V), GROUP_M)
    row0 = pid_m * BLOCK_M
    col0 = pid_v * BLOCK_V
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_v = col0 + tl.arange(0, BLOCK_V)
    row_ok = offs_m < M
    col_ok = offs_v < V

    acc = _logit_tile_tma(
        h_desc, w_desc, row0, col0, H, BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION, WARP_SPECIALIZE
    )
    _store_dlogits(
        acc, offs_m, offs_v, row_ok, col_ok, targets_ptr, inv_temp_ptr, row_max_ptr, log_sumexp_ptr,
        entropy_ptr, g_logprob_ptr, g_entropy_ptr, dlogits_ptr, stride_t, stride_dm, WITH_ENTROPY,
    )  # fmt: skip


class _TmaLaunch(Launch):
    """A launch whose kernel builds its tensor descriptors on the device, in scratch memory
    that Triton asks the allocator for (PyTorch's caching allocator, on the launch's stream)."""

    def run(self) -> None:
        _ensure_allocator()
        super().run()


def _ensure_allocator() -> None:
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_scratch)


def _scratch(size: int, alignment: int, stream):
    import torch

    return torch.empty(size, dtype=torch.int8, device="cuda")


def _flags(hidden, variant):
    return dict(DOT_PRECISION=dot_precision(hidden.dtype), WARP_SPECIALIZE=variant.warp_specialize)


def forward_launch(hidden, weight, targets, inv_temperature, partial, with_entropy, variant, multiprocessors):
    """The TMA forward's launch (``partial``: the ``[4, splits, M]`` fp32 output)."""
    m, h_dim = hidden.shape
    vocab = weight.shape[0]
    tile = variant.tile
    splits = partial.shape[1]
    v_per_split = forward_v_per_split(m, vocab, tile, multiprocessors)
    run_max, run_sum, run_sum_shifted, target_logit = partial.unbind(0)
    args = (
        hidden, weight, targets, inv_temperature, run_max, run_sum, run_sum_shifted, target_logit,
        m, vocab, h_dim, v_per_split, splits, hidden.stride(0), weight.stride(0), targets.stride(0),
    )  # fmt: skip
    constexprs = dict(WITH_ENTROPY=with_entropy, FLATTEN=variant.flatten, **_flags(hidden, variant))
    grid = (triton.cdiv(m, tile.block_m) * splits,)
    return _TmaLaunch(_forward_tma_kernel, grid, args, constexprs, tile)


def dlogits_launch(
    hidden, weight, targets, inv_temperature, row_max, log_sumexp, entropy, g1, g2, out, variant
):
    """The TMA backward's ``dlogits`` launch for one chunk of rows."""
    m, h_dim = hidden.shape
    vocab = weight.shape[0]
    tile = variant.tile
    with_entropy = entropy is not None
    args = (
        hidden, weight, targets, inv_temperature, row_max, log_sumexp,
        entropy if with_entropy else row_max, g1, g2 if with_entropy else g1, out,
        m, vocab, h_dim, hidden.stride(0), weight.stride(0), targets.stride(0), out.stride(0),
    )  # fmt: skip
    constexprs = dict(WITH_ENTROPY=with_entropy, **_flags(hidden, variant))
    grid = (triton.cdiv(m, tile.block_m) * triton.cdiv(vocab, tile.block_v),)
    return _TmaLaunch(_dlogits_tma_kernel, grid, args, constexprs, tile)
