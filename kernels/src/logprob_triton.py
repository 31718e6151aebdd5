"""Triton implementation of the linear log-prob op.

Forward: one kernel tiles ``hidden @ weight.T`` over (row block, vocab slice); each program keeps
an online log-sum-exp, the target logit and the running ``sum p * (z - max)`` for the entropy
(relative to the running max, so that logits of size 1e3 do not cancel in fp32), and writes
per-slice partials that a few ``[splits, M]`` tensor ops combine. Splitting the vocabulary keeps
the GPU full when there are few row blocks. Nothing of size ``[M, V]`` is written.

Programs run in a grouped order: consecutive programs (the ones resident at the same time) cover
``GROUP_M`` row blocks times many vocabulary slices, so each hidden block and each weight tile is
read from HBM about once per group and then served from L2 (row-major order would re-stream every
hidden block once per vocabulary tile: ~300 GB at 32k x 4096 x 152k).

Backward: rows are processed in chunks. For each chunk one kernel recomputes the logit tiles in
fp32 and writes ``dlogits`` (``[chunk, V]``, input dtype); two GEMMs then give ``dH`` and add the
chunk's share to an fp32 ``dW``. Extra memory is O(chunk x V) plus the fp32 ``dW``.

Every input may be a strided view (all strides are honoured); row offsets are 64-bit, so
``rows x stride`` may exceed 2^31. 16-bit inputs use tensor-core MMA with fp32 accumulation;
fp32 inputs use 3xTF32 tensor-core products (about fp32 accuracy, see README).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import tiling, variants
from .logprob_torch import _row_grads

logger = logging.getLogger(__name__)

# Stands for -inf on masked columns: finite, so that 0 * (z - max) stays 0 in the entropy sum.
_MASKED_LOGIT = tl.constexpr(-1.0e30)


@triton.jit
def _logit_tile(
    hidden_ptr,
    weight_ptr,
    offs_m,
    offs_v,
    row_ok,
    col_ok,
    H,
    stride_hm,
    stride_hk,
    stride_wv,
    stride_wk,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """``hidden[offs_m] @ weight[offs_v].T`` as an fp32 ``[BLOCK_M, BLOCK_V]`` tile, masked rows/cols 0."""
    offs_k = tl.arange(0, BLOCK_K)
    h_rows = hidden_ptr + offs_m.to(tl.int64)[:, None] * stride_hm
    w_rows = weight_ptr + offs_v.to(tl.int64)[:, None] * stride_wv
    acc = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < H
        h = tl.load(h_rows + k[None, :] * stride_hk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_rows + k[None, :] * stride_wk, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _grouped_program(pid, row_blocks, col_blocks, GROUP_M: tl.constexpr):
    """Map a linear program id to (row block, column block), ``GROUP_M`` row blocks at a time."""
    per_group = GROUP_M * col_blocks
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(row_blocks - first_m, GROUP_M)
    in_group = pid % per_group
    return first_m + in_group % group_rows, in_group // group_rows


@triton.jit
def _online_softmax_step(
    acc,
    offs_v,
    col_ok,
    targets,
    inv_temp,
    run_max,
    run_sum,
    run_sum_shifted,
    target_logit,
    WITH_ENTROPY: tl.constexpr,
):
    """Fold one fp32 logit tile (``acc``, columns ``offs_v``) into each row's running state.

    Returns the new ``(run_max, run_sum, run_sum_shifted, target_logit)``: the online
    log-sum-exp, ``sum p * (z - max)`` relative to the running max (kept only ``WITH_ENTROPY``)
    and the target's logit. Columns outside ``col_ok`` count as ``_MASKED_LOGIT``.
    """
    z = tl.where(col_ok[None, :], acc * inv_temp[:, None], _MASKED_LOGIT)
    target_logit = target_logit + tl.sum(tl.where(offs_v[None, :] == targets[:, None], z, 0.0), axis=1)
    new_max = tl.maximum(run_max, tl.max(z, axis=1))
    shift = run_max - new_max
    rescale = tl.exp(shift)
    shifted = z - new_max[:, None]
    p = tl.exp(shifted)
    if WITH_ENTROPY:
        run_sum_shifted = (run_sum_shifted + shift * run_sum) * rescale + tl.sum(p * shifted, axis=1)
    run_sum = run_sum * rescale + tl.sum(p, axis=1)
    return new_max, run_sum, run_sum_shifted, target_logit


@triton.jit
def _store_partials(
    max_ptr,
    sumexp_ptr,
    sumexp_shifted_ptr,
    target_logit_ptr,
    pid_split,
    M,
    offs_m,
    row_ok,
    run_max,
    run_sum,
    run_sum_shifted,
    target_logit,
    WITH_ENTROPY: tl.constexpr,
):
    """Write one vocabulary slice's per-row partials into the ``[splits, M]`` outputs."""
    out = pid_split.to(tl.int64) * M + offs_m
    tl.store(max_ptr + out, run_max, mask=row_ok)
    tl.store(sumexp_ptr + out, run_sum, mask=row_ok)
    tl.store(target_logit_ptr + out, target_logit, mask=row_ok)
    if WITH_ENTROPY:
        tl.store(sumexp_shifted_ptr + out, run_sum_shifted, mask=row_ok)


@triton.jit
def _store_dlogits(
    acc,
    offs_m,
    offs_v,
    row_ok,
    col_ok,
    targets_ptr,
    inv_temp_ptr,
    row_max_ptr,
    log_sumexp_ptr,
    entropy_ptr,
    g_logprob_ptr,
    g_entropy_ptr,
    dlogits_ptr,
    stride_t,
    stride_dm,
    WITH_ENTROPY: tl.constexpr,
):
    """Store ``dlogits`` of one fp32 logit tile (``acc``: rows ``offs_m``, columns ``offs_v``) in
    ``dlogits_ptr``'s dtype: ``((onehot(target) - p) * g1 - p * g2 * (logp + entropy)) / T``."""
    inv_temp = tl.load(inv_temp_ptr + offs_m, mask=row_ok, other=1.0)
    row_max = tl.load(row_max_ptr + offs_m, mask=row_ok, other=0.0)
    log_sumexp = tl.load(log_sumexp_ptr + offs_m, mask=row_ok, other=0.0)
    g1 = tl.load(g_logprob_ptr + offs_m, mask=row_ok, other=0.0)
    targets = tl.load(targets_ptr + offs_m.to(tl.int64) * stride_t, mask=row_ok, other=-1)
    logp = (acc * inv_temp[:, None] - row_max[:, None]) - log_sumexp[:, None]
    p = tl.exp(logp)
    if WITH_ENTROPY:
        g2 = tl.load(g_entropy_ptr + offs_m, mask=row_ok, other=0.0)
        entropy = tl.load(entropy_ptr + offs_m, mask=row_ok, other=0.0)
        grad = -p * (g1[:, None] + g2[:, None] * (logp + entropy[:, None]))
    else:
        grad = -p * g1[:, None]
    grad = tl.where(offs_v[None, :] == targets[:, None], grad + g1[:, None], grad)
    grad = grad * inv_temp[:, None]
    tl.store(
        dlogits_ptr + offs_m.to(tl.int64)[:, None] * stride_dm + offs_v[None, :],
        grad.to(dlogits_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


@triton.jit
def _forward_kernel(
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
    stride_hk,
    stride_wv,
    stride_wk,
    stride_t,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m, pid_split = _grouped_program(tl.program_id(0), tl.cdiv(M, BLOCK_M), SPLITS, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    targets = tl.load(targets_ptr + offs_m.to(tl.int64) * stride_t, mask=row_ok, other=-1)
    inv_temp = tl.load(inv_temp_ptr + offs_m, mask=row_ok, other=1.0)

    v_begin = pid_split * V_PER_SPLIT
    v_end = tl.minimum(v_begin + V_PER_SPLIT, V)
    run_max = tl.full([BLOCK_M], _MASKED_LOGIT, tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    run_sum_shifted = tl.zeros([BLOCK_M], tl.float32)
    target_logit = tl.zeros([BLOCK_M], tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        col_ok = offs_v < v_end
        acc = _logit_tile(
            hidden_ptr, weight_ptr, offs_m, offs_v, row_ok, col_ok, H, stride_hm, stride_hk, stride_wv,
            stride_wk, BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION,
        )  # fmt: skip
        run_max, run_sum, run_sum_shifted, target_logit = _online_softmax_step(
            acc, offs_v, col_ok, targets, inv_temp, run_max, run_sum, run_sum_shifted, target_logit,
            WITH_ENTROPY,
        )  # fmt: skip

    _store_partials(
        max_ptr, sumexp_ptr, sumexp_shifted_ptr, target_logit_ptr, pid_split, M, offs_m, row_ok,
        run_max, run_sum, run_sum_shifted, target_logit, WITH_ENTROPY,
    )  # fmt: skip


@triton.jit
def _dlogits_kernel(
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
    stride_hk,
    stride_wv,
    stride_wk,
    stride_t,
    stride_dm,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m, pid_v = _grouped_program(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(V, BLOCK_V), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = offs_m < M
    col_ok = offs_v < V

    acc = _logit_tile(
        hidden_ptr, weight_ptr, offs_m, offs_v, row_ok, col_ok, H, stride_hm, stride_hk, stride_wv,
        stride_wk, BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION,
    )  # fmt: skip
    _store_dlogits(
        acc, offs_m, offs_v, row_ok, col_ok, targets_ptr, inv_temp_ptr, row_max_ptr, log_sumexp_ptr,
        entropy_ptr, g_logprob_ptr, g_entropy_ptr, dlogits_ptr, stride_t, stride_dm, WITH_ENTROPY,
    )  # fmt: skip


@dataclass
class Launch:
    """One kernel launch, fully decided: what runs on the GPU, and what the compiled-code check compiles."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict
    tile: tiling.Tile

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.constexprs, **self.tile.launch_options())


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _capability(device: torch.device) -> int | None:
    """``90`` for sm_90 and so on; None off CUDA (the interpreter)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _variant(kernel: str, hidden: torch.Tensor, weight: torch.Tensor, with_entropy: bool) -> variants.Variant:
    """The variant this launch runs (:func:`.variants.choose`), decided on host facts only."""
    return variants.choose(
        kernel, _capability(hidden.device), hidden.shape[0], hidden.dtype, with_entropy,
        variants.tma_compatible(hidden, weight), variants.triton_version(triton.__version__),
        variants.forced(kernel),
    )  # fmt: skip


def vocab_splits(row_blocks: int, vocab_blocks: int, multiprocessors: int | None) -> int:
    """Vocabulary slices of the forward: at least two waves of programs, and at least 16 slices.

    With the grouped order, 16 slices x 8 row blocks are resident together, so hidden blocks and
    weight tiles are each shared by 8-16 CTAs in L2. 3 slices under the interpreter.
    """
    if multiprocessors is None:
        return min(3, vocab_blocks)
    wanted = max(16, -(-2 * multiprocessors // row_blocks))
    return max(1, min(vocab_blocks, wanted))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: 3xTF32 tensor-core products (about fp32 accuracy); 16-bit inputs: native MMA."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def forward_launch(hidden, weight, targets, inv_temperature, partial, with_entropy, tile, multiprocessors):
    """The forward's launch for these tensors (``partial``: the ``[4, splits, M]`` fp32 output)."""
    m, h_dim = hidden.shape
    vocab = weight.shape[0]
    splits = partial.shape[1]
    v_per_split = forward_v_per_split(m, vocab, tile, multiprocessors)
    run_max, run_sum, run_sum_shifted, target_logit = partial.unbind(0)
    args = (
        hidden, weight, targets, inv_temperature, run_max, run_sum, run_sum_shifted, target_logit,
        m, vocab, h_dim, v_per_split, splits,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), targets.stride(0),
    )  # fmt: skip
    constexprs = dict(WITH_ENTROPY=with_entropy, DOT_PRECISION=dot_precision(hidden.dtype))
    return Launch(_forward_kernel, (triton.cdiv(m, tile.block_m) * splits,), args, constexprs, tile)


def forward_v_per_split(m: int, vocab: int, tile: tiling.Tile, multiprocessors: int | None) -> int:
    vocab_blocks = triton.cdiv(vocab, tile.block_v)
    splits = vocab_splits(triton.cdiv(m, tile.block_m), vocab_blocks, multiprocessors)
    return triton.cdiv(vocab_blocks, splits) * tile.block_v


def forward_splits(m: int, vocab: int, tile: tiling.Tile, multiprocessors: int | None) -> int:
    return triton.cdiv(vocab, forward_v_per_split(m, vocab, tile, multiprocessors))


def dlogits_launch(hidden, weight, targets, inv_temperature, row_max, log_sumexp, entropy, g1, g2, out, tile):
    """The backward's ``dlogits`` launch for one chunk of rows."""
    m, h_dim = hidden.shape
    vocab = weight.shape[0]
    with_entropy = entropy is not None
    args = (
        hidden, weight, targets, inv_temperature, row_max, log_sumexp,
        entropy if with_entropy else row_max, g1, g2 if with_entropy else g1, out,
        m, vocab, h_dim,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), targets.stride(0), out.stride(0),
    )  # fmt: skip
    constexprs = dict(WITH_ENTROPY=with_entropy, DOT_PRECISION=dot_precision(hidden.dtype))
    grid = (triton.cdiv(m, tile.block_m) * triton.cdiv(vocab, tile.block_v),)
    return Launch(_dlogits_kernel, grid, args, constexprs, tile)


def _device_shape(device: torch.device) -> tuple[int | None, int | None]:
    capability = _capability(device)
    multiprocessors = None if capability is None else _multiprocessors(device.index or 0)
    return capability, multiprocessors


def triton_forward(hidden, weight, targets, inv_temperature, with_entropy):
    """Return ``(row_max, log_sumexp, logprob, entropy)`` in fp32, unmasked (``entropy`` None unless asked)."""
    m = hidden.shape[0]
    capability, multiprocessors = _device_shape(hidden.device)
    variant = _variant("forward", hidden, weight, with_entropy)
    splits = forward_splits(m, weight.shape[0], variant.tile, multiprocessors)
    partial = torch.empty((4, splits, m), dtype=torch.float32, device=hidden.device)
    if variant.tma:
        from . import hopper

        launch = hopper.forward_launch(
            hidden, weight, targets, inv_temperature, partial, with_entropy, variant, multiprocessors
        )
    else:
        launch = forward_launch(
            hidden, weight, targets, inv_temperature, partial, with_entropy, variant.tile, multiprocessors
        )
    launch.run()
    run_max, run_sum, run_sum_shifted, target_logit = partial.unbind(0)
    row_max = run_max.amax(0)
    scale = torch.exp(run_max - row_max)
    sumexp = (run_sum * scale).sum(0)
    log_sumexp = torch.log(sumexp)
    logprob = (target_logit.sum(0) - row_max) - log_sumexp
    if not with_entropy:
        return row_max, log_sumexp, logprob, None
    # sum_j p_j (z_j - row_max), each slice's sum moved from its own max to the row's max.
    shifted = ((run_sum_shifted + (run_max - row_max) * run_sum) * scale).sum(0) / sumexp
    return row_max, log_sumexp, logprob, log_sumexp - shifted


def triton_dlogits(hidden, weight, targets, inv_temperature, row_max, log_sumexp, entropy, g1, g2, out):
    """Write ``d sum(g1 * logprob + g2 * entropy) / d(hidden @ weight.T)`` for these rows into ``out``."""
    variant = _variant("dlogits", hidden, weight, entropy is not None)
    if variant.tma:
        from . import hopper

        launch = hopper.dlogits_launch(
            hidden, weight, targets, inv_temperature, row_max, log_sumexp, entropy, g1, g2, out, variant
        )
    else:
        launch = dlogits_launch(
            hidden, weight, targets, inv_temperature, row_max, log_sumexp, entropy, g1, g2, out, variant.tile
        )
    launch.run()


# Vocabulary rows per GEMM of the rounded dW fallback: its 16-bit temporary is this x H, not V x H.
FALLBACK_VOCAB_ROWS = 8192


def _accumulate_weight_grad(grad_weight: torch.Tensor, dlogits: torch.Tensor, hidden: torch.Tensor) -> None:
    """``grad_weight (fp32) += dlogits.T @ hidden``.

    bf16/fp16 operands use an fp32-output GEMM (``out_dtype``), so no chunk's share is rounded to
    the input dtype. Where torch lacks it (:func:`_has_fp32_out_addmm`), each chunk's share is
    rounded once, then summed in fp32, ``FALLBACK_VOCAB_ROWS`` vocabulary rows at a time: said once.
    """
    if dlogits.dtype == torch.float32:
        grad_weight.addmm_(dlogits.t(), hidden)
    elif _has_fp32_out_addmm(dlogits.device.type):
        _addmm_fp32(grad_weight, dlogits.t(), hidden)
    else:
        _say_rounded_weight_grad(dlogits.device.type, dlogits.dtype, hidden.shape[1])
        for start in range(0, grad_weight.shape[0], FALLBACK_VOCAB_ROWS):
            rows = slice(start, start + FALLBACK_VOCAB_ROWS)
            grad_weight[rows].add_(dlogits[:, rows].t() @ hidden)


def _addmm_fp32(out: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor) -> None:
    """``out (fp32) += mat1 @ mat2`` for 16-bit operands, accumulated and written in fp32."""
    torch.addmm(out, mat1, mat2, out_dtype=torch.float32, out=out)


@functools.cache
def _has_fp32_out_addmm(device_type: str) -> bool:
    """Whether this torch runs :func:`_addmm_fp32` (the very call, ``out=`` included) on 16-bit
    operands on this device type: CUDA builds of torch >= 2.8 do, CPU builds do not."""
    a = torch.zeros(16, 16, device=device_type, dtype=torch.bfloat16)
    try:
        _addmm_fp32(torch.zeros(16, 16, device=device_type), a, a)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


@functools.cache
def _say_rounded_weight_grad(device_type: str, dtype: torch.dtype, h_dim: int) -> None:
    temporary = FALLBACK_VOCAB_ROWS * h_dim * dtype.itemsize / 2**20
    logger.warning(
        "torch %s has no fp32-output addmm (out_dtype) for %s on %s: the log-prob kernel's dW is summed "
        "in fp32 from per-chunk products rounded to %s once each, "
        "with a %.0f MiB %s temporary (%d vocabulary rows x H=%d)",
        torch.__version__, dtype, device_type, str(dtype).removeprefix("torch."), temporary,
        str(dtype).removeprefix("torch."), FALLBACK_VOCAB_ROWS, h_dim,
    )  # fmt: skip


def check_column_offsets(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    """The kernels' row offsets are 64-bit, their column (``H``-direction) offsets 32-bit."""
    for name, t in (("hidden", hidden), ("weight", weight)):
        if (t.shape[1] - 1) * t.stride(1) >= 2**31:
            raise ValueError(
                f"{name}: H x column stride = {t.shape[1]} x {t.stride(1)} passes 2^31 elements; "
                f"pass {name}.contiguous() (rows of any stride are fine)"
            )


class TritonLinearLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temperature, valid, return_entropy, chunk_rows):
        check_column_offsets(hidden, weight)
        row_max, log_sumexp, logprob, entropy = triton_forward(
            hidden, weight, targets, inv_temperature, return_entropy
        )
        ctx.save_for_backward(hidden, weight, targets, inv_temperature, valid, row_max, log_sumexp, entropy)
        ctx.chunk_rows = chunk_rows
        zero = torch.zeros_like(logprob)
        max_logprob = torch.where(valid, -log_sumexp, zero)
        ctx.mark_non_differentiable(max_logprob)
        return (
            torch.where(valid, logprob, zero),
            None if entropy is None else torch.where(valid, entropy, zero),
            max_logprob,
        )

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy, _grad_max_logprob):
        hidden, weight, targets, inv_temperature, valid, row_max, log_sumexp, entropy = ctx.saved_tensors
        g1, g2 = _row_grads(grad_logprob, grad_entropy, valid)
        if entropy is None or grad_entropy is None:
            entropy = g2 = None  # entropy not asked for, or not part of the loss: skip its gradient terms
        grad_hidden, grad_weight = _chunked_grads(
            hidden, weight, targets, inv_temperature, row_max, log_sumexp, entropy, g1, g2,
            ctx.chunk_rows, *ctx.needs_input_grad[:2],
        )  # fmt: skip
        # The dlogits buffer is freed on return: the 16-bit dW copy never coexists with it.
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def _chunked_grads(
    hidden, weight, targets, inv_temperature, row_max, log_sumexp, entropy, g1, g2, chunk_rows, need_h, need_w
):
    """``(dH in the input dtype, dW in fp32)``, one ``[chunk, V]`` dlogits buffer at a time."""
    m = hidden.shape[0]
    grad_hidden = torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_h else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    chunk = min(chunk_rows, m)
    dlogits = torch.empty((chunk, weight.shape[0]), dtype=hidden.dtype, device=hidden.device)
    for start in range(0, m, chunk):
        rows = slice(start, min(start + chunk, m))
        buf = dlogits[: rows.stop - start]
        triton_dlogits(
            hidden[rows], weight, targets[rows], inv_temperature[rows], row_max[rows], log_sumexp[rows],
            None if entropy is None else entropy[rows], g1[rows], None if g2 is None else g2[rows], buf,
        )  # fmt: skip
        if need_h:
            torch.mm(buf, weight, out=grad_hidden[rows])
        if need_w:
            _accumulate_weight_grad(grad_weight, buf, hidden[rows])
    return grad_hidden, grad_weight
