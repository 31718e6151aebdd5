"""Triton implementation of the linear log-prob op.

Forward: one kernel tiles ``hidden @ weight.T`` over (row block, vocab slice); each program keeps
an online log-sum-exp, the target logit and the running ``sum p * (z - max)`` for the entropy
(relative to the running max, so that logits of size 1e3 do not cancel in fp32), and writes
per-slice partials that a few ``[splits, M]`` tensor ops combine. Splitting the vocabulary keeps
the GPU full when there are few row blocks. Nothing of size ``[M, V]`` is written.

Backward: rows are processed in chunks. For each chunk one kernel recomputes the logit tiles in
fp32 and writes ``dlogits`` (``[chunk, V]``, input dtype); two GEMMs then give ``dH`` and add the
chunk's share to an fp32 ``dW``. Extra memory is O(chunk x V) plus the fp32 ``dW``.
"""

from __future__ import annotations

import functools
import logging

import torch
import triton
import triton.language as tl

from .logprob_torch import _row_grads

logger = logging.getLogger(__name__)


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
    stride_wv,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """``hidden[offs_m] @ weight[offs_v].T`` as an fp32 ``[BLOCK_M, BLOCK_V]`` tile, masked rows/cols 0."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k_ok = (k0 + offs_k) < H
        h = tl.load(
            hidden_ptr + offs_m[:, None] * stride_hm + (k0 + offs_k)[None, :],
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        w = tl.load(
            weight_ptr + offs_v[:, None] * stride_wv + (k0 + offs_k)[None, :],
            mask=col_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc


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
    stride_hm,
    stride_wv,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_split = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    targets = tl.load(targets_ptr + offs_m, mask=row_ok, other=-1)
    inv_temp = tl.load(inv_temp_ptr + offs_m, mask=row_ok, other=1.0)

    v_begin = pid_split * V_PER_SPLIT
    v_end = tl.minimum(v_begin + V_PER_SPLIT, V)
    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    run_sum_shifted = tl.zeros([BLOCK_M], tl.float32)
    target_logit = tl.zeros([BLOCK_M], tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        col_ok = offs_v < v_end
        acc = _logit_tile(
            hidden_ptr, weight_ptr, offs_m, offs_v, row_ok, col_ok, H, stride_hm, stride_wv,
            BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION,
        )  # fmt: skip
        z = acc * inv_temp[:, None]
        z = tl.where(col_ok[None, :], z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        rescale = tl.exp(run_max - new_max)
        p = tl.exp(z - new_max[:, None])
        if WITH_ENTROPY:
            shifted = tl.where(col_ok[None, :], z - new_max[:, None], 0.0)
            old_shift = tl.where(run_sum > 0, run_max - new_max, 0.0)
            run_sum_shifted = (run_sum_shifted + old_shift * run_sum) * rescale + tl.sum(p * shifted, axis=1)
        run_sum = run_sum * rescale + tl.sum(p, axis=1)
        is_target = offs_v[None, :] == targets[:, None]
        target_logit += tl.sum(tl.where(is_target, z, 0.0), axis=1)
        run_max = new_max

    out = pid_split * M + offs_m
    tl.store(max_ptr + out, run_max, mask=row_ok)
    tl.store(sumexp_ptr + out, run_sum, mask=row_ok)
    tl.store(target_logit_ptr + out, target_logit, mask=row_ok)
    if WITH_ENTROPY:
        tl.store(sumexp_shifted_ptr + out, run_sum_shifted, mask=row_ok)


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
    stride_wv,
    stride_dm,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = offs_m < M
    col_ok = offs_v < V

    acc = _logit_tile(
        hidden_ptr, weight_ptr, offs_m, offs_v, row_ok, col_ok, H, stride_hm, stride_wv,
        BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION,
    )  # fmt: skip
    inv_temp = tl.load(inv_temp_ptr + offs_m, mask=row_ok, other=1.0)
    row_max = tl.load(row_max_ptr + offs_m, mask=row_ok, other=0.0)
    log_sumexp = tl.load(log_sumexp_ptr + offs_m, mask=row_ok, other=0.0)
    g1 = tl.load(g_logprob_ptr + offs_m, mask=row_ok, other=0.0)
    targets = tl.load(targets_ptr + offs_m, mask=row_ok, other=-1)
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
        dlogits_ptr + offs_m[:, None] * stride_dm + offs_v[None, :],
        grad.to(dlogits_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


def _blocks(dtype: torch.dtype, device: torch.device) -> dict:
    """Tile shapes: Hopper/Ampere-friendly on CUDA, small under the interpreter (speed, coverage)."""
    if device.type != "cuda":
        return dict(BLOCK_M=32, BLOCK_V=64, BLOCK_K=32, num_warps=4, num_stages=1)
    block_k = 32 if dtype == torch.float32 else 64
    return dict(BLOCK_M=128, BLOCK_V=128, BLOCK_K=block_k, num_warps=8, num_stages=3)


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _vocab_splits(row_blocks: int, vocab_blocks: int, device: torch.device) -> int:
    """Enough (row block, vocab slice) programs to fill the GPU twice over; 3 under the interpreter."""
    if device.type != "cuda":
        return min(3, vocab_blocks)
    wanted = 2 * _multiprocessors(device.index or 0)
    return max(1, min(vocab_blocks, -(-wanted // row_blocks)))


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get true fp32 products (tf32 would cost ~1e-3 relative error in log-probs)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def triton_forward(hidden, weight, targets, inv_temperature, with_entropy):
    """Return ``(row_max, log_sumexp, logprob, entropy)`` in fp32, unmasked (``entropy`` None unless asked)."""
    m, h_dim = hidden.shape
    vocab = weight.shape[0]
    cfg = _blocks(hidden.dtype, hidden.device)
    row_blocks = triton.cdiv(m, cfg["BLOCK_M"])
    vocab_blocks = triton.cdiv(vocab, cfg["BLOCK_V"])
    splits = _vocab_splits(row_blocks, vocab_blocks, hidden.device)
    v_per_split = triton.cdiv(vocab_blocks, splits) * cfg["BLOCK_V"]
    splits = triton.cdiv(vocab, v_per_split)
    partial = torch.empty((4, splits, m), dtype=torch.float32, device=hidden.device)
    run_max, run_sum, run_sum_shifted, target_logit = partial.unbind(0)
    _forward_kernel[(row_blocks, splits)](
        hidden,
        weight,
        targets,
        inv_temperature,
        run_max,
        run_sum,
        run_sum_shifted,
        target_logit,
        m,
        vocab,
        h_dim,
        v_per_split,
        hidden.stride(0),
        weight.stride(0),
        WITH_ENTROPY=with_entropy,
        DOT_PRECISION=_dot_precision(hidden.dtype),
        **cfg,
    )
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
    m, h_dim = hidden.shape
    vocab = weight.shape[0]
    cfg = _blocks(hidden.dtype, hidden.device)
    with_entropy = entropy is not None
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(vocab, cfg["BLOCK_V"]))
    _dlogits_kernel[grid](
        hidden,
        weight,
        targets,
        inv_temperature,
        row_max,
        log_sumexp,
        entropy if with_entropy else row_max,
        g1,
        g2 if with_entropy else g1,
        out,
        m,
        vocab,
        h_dim,
        hidden.stride(0),
        weight.stride(0),
        out.stride(0),
        WITH_ENTROPY=with_entropy,
        DOT_PRECISION=_dot_precision(hidden.dtype),
        **cfg,
    )


def _accumulate_weight_grad(grad_weight: torch.Tensor, dlogits: torch.Tensor, hidden: torch.Tensor) -> None:
    """``grad_weight (fp32) += dlogits.T @ hidden``, accumulated in fp32 for any input dtype.

    bf16/fp16 operands use cuBLAS with an fp32 output (``out_dtype``), so no chunk's share is
    rounded to the input dtype; torch builds without it add a rounded per-chunk product instead.
    """
    if dlogits.dtype == torch.float32:
        grad_weight.addmm_(dlogits.t(), hidden)
    elif _has_fp32_out_addmm():
        torch.addmm(grad_weight, dlogits.t(), hidden, out_dtype=torch.float32, out=grad_weight)
    else:
        grad_weight.add_(dlogits.t() @ hidden)


@functools.cache
def _has_fp32_out_addmm() -> bool:
    try:
        a = torch.zeros(16, 16, device="cuda", dtype=torch.bfloat16)
        torch.addmm(torch.zeros(16, 16, device="cuda"), a, a, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        logger.warning("torch.addmm has no fp32 out_dtype here: dW chunks are rounded to bf16/fp16 once each")
        return False
    return True


class TritonLinearLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temperature, valid, return_entropy, chunk_rows):
        hidden = hidden.contiguous()
        weight = weight.contiguous()
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
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g1, g2 = _row_grads(grad_logprob, grad_entropy, valid)
        if entropy is None or grad_entropy is None:
            g2 = None  # entropy not asked for, or not part of the loss: skip its gradient terms
        m = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        )
        chunk = min(ctx.chunk_rows, m)
        dlogits = torch.empty((chunk, weight.shape[0]), dtype=hidden.dtype, device=hidden.device)
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            rows = slice(start, stop)
            buf = dlogits[: stop - start]
            triton_dlogits(
                hidden[rows],
                weight,
                targets[rows],
                inv_temperature[rows],
                row_max[rows],
                log_sumexp[rows],
                None if g2 is None else entropy[rows],
                g1[rows],
                None if g2 is None else g2[rows],
                buf,
            )
            if need_hidden:
                torch.mm(buf, weight, out=grad_hidden[rows])
            if need_weight:
                _accumulate_weight_grad(grad_weight, buf, hidden[rows])
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None
