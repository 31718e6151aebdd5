"""Inputs and shapes the trainer never produces but a user may: the Triton path stays correct.

Runs the real kernels (the interpreter on CPU, compiled on a GPU machine). The 64-bit offsets
and the fp32 tensor-core path are checked in the compiled code (``test_kernel_compiled.py``).
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from occ_fast.kernels import linear_logprob, logprob_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _fp64(hidden, weight, targets):
    logp = torch.log_softmax(hidden.double() @ weight.double().t(), dim=-1)
    return logp.gather(1, targets[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


def _inputs(m, h, v, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, h, generator=gen) * 3 / h**0.5
    weight = torch.randn(v, h, generator=gen)
    return hidden.to(DEVICE), weight.to(DEVICE), torch.randint(0, v, (m,), generator=gen).to(DEVICE)


@pytest.mark.parametrize("seed", [0, 1])
def test_strided_and_transposed_views(seed):
    """Every input a non-contiguous view: row slice with padding, transposed weight, every other target."""
    m, h, v = 37, 48, 203
    hidden, weight, targets = _inputs(m, h, v, seed)
    padded = torch.zeros(m, h + 16, device=DEVICE)
    padded[:, 8 : 8 + h] = hidden
    hidden_view = padded[:, 8 : 8 + h]  # row stride h + 16
    weight_view = weight.t().contiguous().t()  # column-major: strides (1, V)
    long_targets = torch.stack([targets, (targets + 1) % v], dim=1).reshape(-1)
    targets_view = long_targets[::2]  # stride 2
    assert not (hidden_view.is_contiguous() or weight_view.is_contiguous() or targets_view.is_contiguous())
    h_leaf = hidden_view.detach().requires_grad_()
    w_leaf = weight_view.detach().requires_grad_()
    out = linear_logprob(h_leaf, w_leaf, targets_view, return_entropy=True, impl="triton")
    ref_lp, ref_ent = _fp64(hidden.cpu(), weight.cpu(), targets.cpu())
    torch.testing.assert_close(out.logprob.cpu().double(), ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.entropy.cpu().double(), ref_ent, rtol=1e-5, atol=1e-5)
    (out.logprob.sum() + out.entropy.sum()).backward()
    h64, w64 = hidden.cpu().double().requires_grad_(), weight.cpu().double().requires_grad_()
    lp, ent = _fp64(h64, w64, targets.cpu())
    (lp.sum() + ent.sum()).backward()
    torch.testing.assert_close(h_leaf.grad.cpu().double(), h64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w_leaf.grad.cpu().double(), w64.grad, rtol=1e-4, atol=1e-5)


def test_column_stride_past_int32_is_refused_by_name():
    """A transposed weight whose H-direction offsets pass 2^31 (meta tensors: nothing is allocated)."""
    v, h = 2**20, 4096  # weight.t().contiguous().t(): column stride V, (H - 1) x V > 2^31
    weight = torch.empty(h, v, device="meta", dtype=torch.bfloat16).t()
    hidden = torch.empty(8, h, device="meta", dtype=torch.bfloat16)
    rows = torch.empty(8, device="meta")
    with pytest.raises(
        ValueError, match=r"weight: H x column stride = 4096 x 1048576 .*weight.contiguous\(\)"
    ):
        logprob_triton.TritonLinearLogprob.apply(hidden, weight, rows.long(), rows, rows.bool(), False, 128)


def test_largest_chunk_equals_small_chunks():
    """A chunk larger than all rows (one dlogits buffer for everything) gives the same gradients."""
    hidden, weight, targets = _inputs(70, 32, 150, seed=3)
    grads = []
    for chunk_rows in (16, 10**9):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = linear_logprob(h, w, targets, return_entropy=True, impl="triton", chunk_rows=chunk_rows)
        (out.logprob.sum() - 0.3 * out.entropy.sum()).backward()
        grads.append((h.grad, w.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class _LiveAtCopy(TorchDispatchMode):
    """Records, at each copy of a ``shape`` tensor to ``dtype``, whether the watched tensors are alive."""

    def __init__(self, shape, dtype, watched):
        super().__init__()
        self.shape, self.dtype, self.watched, self.alive = shape, dtype, watched, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        copy = func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == self.dtype
        if copy and tuple(args[0].shape) == self.shape:
            self.alive.append([ref() is not None for ref in self.watched])
        return func(*args, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of the fp32-output GEMM")
def test_half_precision_backward_on_cpu_and_dw_copy_after_dlogits_freed(monkeypatch):
    """bf16 on a CPU-only torch: dW falls back to a rounded GEMM (no crash), and the bf16 dW copy is
    made only once the ``[chunk, V]`` dlogits buffer is freed (the two never coexist)."""
    m, h, v = 48, 32, 4096
    hidden, weight, targets = _inputs(m, h, v, seed=4)
    h16, w16 = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    out = linear_logprob(h16, w16, targets, return_entropy=True, impl="triton", chunk_rows=m)
    buffers = []
    real_dlogits = logprob_triton.triton_dlogits

    def watch_buffer(*args):
        buffers.append(weakref.ref(args[-1]._base if args[-1]._base is not None else args[-1]))
        return real_dlogits(*args)

    monkeypatch.setattr(logprob_triton, "triton_dlogits", watch_buffer)
    watch = _LiveAtCopy((v, h), torch.bfloat16, buffers)
    with watch:
        (out.logprob.sum() + out.entropy.sum()).float().backward()
    # bf16 accuracy is checked on a GPU (test_linear_logprob_gpu.py): the interpreter's bf16
    # arithmetic inside kernels is not the GPU's.
    assert h16.grad.dtype == torch.bfloat16 and w16.grad.dtype == torch.bfloat16
    assert torch.isfinite(h16.grad.float()).all() and torch.isfinite(w16.grad.float()).all()
    assert buffers and watch.alive, "no dlogits launch or no bf16 dW copy seen"
    assert not any(any(alive) for alive in watch.alive), "dlogits buffer alive when the bf16 dW copy is made"
