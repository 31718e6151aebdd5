"""GPU-only checks of the compiled Triton path: bf16 accuracy, fp32 accuracy, no host sync.

bf16 criterion (Cut Cross-Entropy's): the kernel's error against an fp64 reference of the same
bf16 inputs is no worse than PyTorch's own bf16 computation (bf16 GEMM for the logits, fp32
log-softmax, autograd) against that reference. Errors are relative Frobenius norms.
"""

from __future__ import annotations

import pytest
import torch

from occ_fast.kernels import heads_logprob, linear_logprob

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


def _fp64_reference(hidden, weight, targets, temperature, g1, g2):
    h = hidden.double().requires_grad_()
    w = weight.double().requires_grad_()
    logp = torch.log_softmax((h @ w.t()) / temperature[:, None].double(), dim=-1)
    lp = logp.gather(1, targets[:, None]).squeeze(1)
    ent = -(logp.exp() * logp).sum(-1)
    (g1.double() * lp + g2.double() * ent).sum().backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


def _torch_bf16(hidden, weight, targets, temperature, g1, g2):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    logits = (h @ w.t()).float() / temperature[:, None]
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(1, targets[:, None]).squeeze(1)
    ent = -(logp.exp() * logp).sum(-1)
    (g1 * lp + g2 * ent).sum().backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


def _ours(hidden, weight, targets, temperature, g1, g2):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    out = linear_logprob(h, w, targets, temperature=temperature, return_entropy=True, impl="triton")
    (g1 * out.logprob + g2 * out.entropy).sum().backward()
    assert h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype
    return out.logprob.detach(), out.entropy.detach(), h.grad, w.grad


@pytest.mark.parametrize(("m", "h", "v"), [(1537, 1024, 32003), (300, 4096, 151680)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_no_worse_than_torch(m, h, v, dtype):
    torch.manual_seed(0)
    hidden = (torch.randn(m, h, device="cuda") * 2 / h**0.5).to(dtype)
    weight = torch.randn(v, h, device="cuda").to(dtype)
    targets = torch.randint(0, v, (m,), device="cuda")
    temperature = torch.rand(m, device="cuda") + 0.5
    g1, g2 = torch.randn(m, device="cuda"), torch.randn(m, device="cuda")
    ref = _fp64_reference(hidden, weight, targets, temperature, g1, g2)
    base = _torch_bf16(hidden, weight, targets, temperature, g1, g2)
    ours = _ours(hidden, weight, targets, temperature, g1, g2)
    for name, o, b, r in zip(("logprob", "entropy", "grad_hidden", "grad_weight"), ours, base, ref):
        ours_err, torch_err = _rel_err(o, r), _rel_err(b, r)
        assert ours_err <= 1.1 * torch_err + 1e-6, f"{name}: ours {ours_err:.3e} vs torch {torch_err:.3e}"


def test_fp32_matches_fp64_at_scale():
    torch.manual_seed(1)
    m, h, v = 777, 512, 50_021
    hidden = torch.randn(m, h, device="cuda") * 3 / h**0.5
    weight = torch.randn(v, h, device="cuda")
    targets = torch.randint(0, v, (m,), device="cuda")
    temperature = torch.full((m,), 0.8, device="cuda")
    g1, g2 = torch.randn(m, device="cuda"), torch.randn(m, device="cuda")
    ref = _fp64_reference(hidden, weight, targets, temperature, g1, g2)
    ours = _ours(hidden, weight, targets, temperature, g1, g2)
    for name, o, r in zip(("logprob", "entropy", "grad_hidden", "grad_weight"), ours, ref):
        assert _rel_err(o, r) < 1e-5, name


def test_no_host_synchronisation_in_forward_and_backward():
    m, h, v = 513, 256, 10_007
    hidden = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(v, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, v, (m,), device="cuda")
    targets[::5] = -100
    g = torch.randn(m, device="cuda")
    linear_logprob(hidden, weight, targets, impl="triton")  # compile outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = heads_logprob([hidden, hidden * 0.5], weight, [targets, targets], return_entropy=True)
        sum((g * o.logprob + g * o.entropy).sum() for o in outs).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(hidden.grad.float()).all() and torch.isfinite(weight.grad.float()).all()


def test_backward_peak_memory_within_the_model():
    """Measured peak of one fwd+bwd stays within the model: inputs, grads, fp32 dW, one dlogits chunk."""
    from occ_fast.kernels.logprob import default_chunk_rows
    from occ_fast.kernels.roofline import backward_peak_bytes

    m, h, v = 4096, 1024, 151_936
    torch.manual_seed(2)
    hidden = (torch.randn(m, h, device="cuda") / h**0.5).bfloat16().requires_grad_()
    weight = torch.randn(v, h, device="cuda").bfloat16().requires_grad_()
    targets = torch.randint(0, v, (m,), device="cuda")
    chunk = 1024
    out = linear_logprob(hidden, weight, targets, return_entropy=True, impl="triton", chunk_rows=chunk)
    (out.logprob.sum() + out.entropy.sum()).backward()  # compile outside the measurement
    hidden.grad = weight.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = linear_logprob(hidden, weight, targets, return_entropy=True, impl="triton", chunk_rows=chunk)
    (out.logprob.sum() + out.entropy.sum()).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    model = backward_peak_bytes(m, h, v, torch.bfloat16, chunk)
    assert default_chunk_rows("triton", weight) >= chunk
    assert peak <= model + 128 * 2**20, (peak / 1e9, model / 1e9)  # + row statistics, cuBLAS workspace
