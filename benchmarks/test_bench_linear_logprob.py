"""Throughput and peak memory of ``linear_logprob`` against the naive and Liger baselines.

FLOP convention: one ``[N, H] x [H, V]`` GEMM is 2NHV (N = all stacked rows). The credited rate
counts ``fwd`` at 2NHV and ``fwd+bwd`` at 6NHV whatever the implementation does, so it compares
time to solution; the executed rate counts what the implementation computes (the Triton and
chunked paths recompute the logits: 8NHV; the naive path and Liger: 6NHV). The credited rate is
also given as a fraction of a dense matmul measured in the same run. On GPU the backward's
modelled peak memory (inputs, grads, fp32 dW, one dlogits chunk) is printed beside the measured one.

GPU: N = 16384 tokens per head, H = 4096, V = 151936, bf16, 1 and 2 heads stacked.
CPU: small fp32 shapes, chunked vs naive.
"""

from __future__ import annotations

import pytest
import torch

from harness import Row, cpu_peak_gb, cuda_peak_gb, format_table, matmul_peak_tflops, median_ms, write_results
from occ_fast.kernels import linear_logprob

ON_GPU = torch.cuda.is_available()
if ON_GPU:
    CASES = [("1 head", 16384, 4096, 151936), ("2 heads", 2 * 16384, 4096, 151936)]
    IMPLS = ["triton", "torch_chunked", "torch", "liger"]
    DTYPE, REPEATS = torch.bfloat16, 5
else:
    CASES = [("1 head", 1024, 256, 8000), ("2 heads", 2048, 256, 8000)]
    IMPLS = ["torch_chunked", "torch"]
    DTYPE, REPEATS = torch.float32, 3

_CPU_PEAK_SCRIPT = r"""
import sys, torch
from occ_fast.kernels import memory
from occ_fast.kernels import linear_logprob
n, h, v, impl, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
hidden = torch.randn(n, h, requires_grad=True); weight = torch.randn(v, h, requires_grad=True)
targets = torch.randint(0, v, (n,))
hidden.grad, weight.grad = torch.zeros_like(hidden), torch.zeros_like(weight)
memory.reset_peak_rss()
before = memory.rss_bytes()
out = linear_logprob(hidden, weight, targets, return_entropy=True, impl=impl)
if mode == "fwd+bwd":
    (out.logprob.sum() + out.entropy.sum()).backward()
print(memory.peak_rss_bytes() - before)
"""

ROWS: list[Row] = []
# [N, H] x [H, V] GEMMs one fwd+bwd executes: recomputing paths 4 (logits twice, dH, dW), others 3.
EXECUTED_GEMMS = {"triton": 4, "torch_chunked": 4, "torch": 3, "liger": 3}


@pytest.fixture(scope="module")
def matmul_peak():
    peak = matmul_peak_tflops()
    yield peak
    conventions = (
        "credited: fwd 2NHV, fwd+bwd 6NHV; executed: fwd+bwd 8NHV with recompute (triton, torch_chunked), "
        "6NHV otherwise; N = all stacked rows"
    )
    table = format_table("linear_logprob", ROWS, peak)
    print("\n" + table)
    modelled = {case: _modelled_backward_peak_gb(n, h, v) for case, n, h, v in CASES} if ON_GPU else {}
    for case, gb in modelled.items():
        print(
            f"{case}: modelled triton backward peak (inputs, grads, fp32 dW, one dlogits chunk) {gb:.2f} GB"
        )
    path = write_results("linear_logprob", ROWS, peak, conventions, table, modelled_backward_peak_gb=modelled)
    print(f"results written to {path}")


def _modelled_backward_peak_gb(n: int, h: int, v: int) -> float:
    from occ_fast.kernels.logprob import default_chunk_rows
    from occ_fast.kernels.roofline import backward_peak_bytes

    chunk = min(n, default_chunk_rows("triton", torch.empty(v, h, dtype=DTYPE, device="meta")))
    return backward_peak_bytes(n, h, v, DTYPE, chunk) / 1e9


def _liger_step(hidden, weight, targets):
    """Liger's fused linear CE with per-token output: -logprob, no entropy (nearest public equivalent)."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="none")

    def run(backward: bool):
        nll = loss_fn(weight, hidden, targets)
        if backward:
            (nll * torch.randn_like(nll)).sum().backward()

    return run


def _ours_step(hidden, weight, targets, impl):
    g1 = torch.randn(hidden.shape[0], device=hidden.device)
    g2 = torch.randn(hidden.shape[0], device=hidden.device)

    def run(backward: bool):
        out = linear_logprob(hidden, weight, targets, return_entropy=True, impl=impl)
        if backward:
            (g1 * out.logprob + g2 * out.entropy).sum().backward()

    return run


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("case", "n", "h", "v"), CASES)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_linear_logprob_throughput(matmul_peak, case, n, h, v, impl, mode):
    device = "cuda" if ON_GPU else "cpu"
    if impl == "liger":
        pytest.importorskip("liger_kernel", reason="liger-kernel not installed (pip install occ-fast[liger])")
    backward = mode == "fwd+bwd"
    hidden = (torch.randn(n, h, device=device) / h**0.5).to(DTYPE).requires_grad_()
    weight = torch.randn(v, h, device=device).to(DTYPE).requires_grad_()
    targets = torch.randint(0, v, (n,), device=device)
    step = (
        _liger_step(hidden, weight, targets) if impl == "liger" else _ours_step(hidden, weight, targets, impl)
    )

    def call():
        hidden.grad = weight.grad = None
        if backward:
            step(True)
        else:
            with torch.no_grad():
                step(False)

    note = "per-token NLL only" if impl == "liger" else "logprob + entropy"
    try:
        ms = median_ms(call, repeats=REPEATS)
        peak_gb = (
            cuda_peak_gb(call)
            if ON_GPU
            else cpu_peak_gb(_CPU_PEAK_SCRIPT, str(n), str(h), str(v), impl, mode)
        )
    except torch.OutOfMemoryError:
        ROWS.append(Row(case, impl, mode, None, None, None, None, None, note="out of memory"))
        torch.cuda.empty_cache()
        return
    credited = (6 if backward else 2) * n * h * v
    executed = (EXECUTED_GEMMS[impl] if backward else 1) * 2 * n * h * v
    tflops = credited / (ms * 1e-3) / 1e12
    executed_tflops = executed / (ms * 1e-3) / 1e12
    ROWS.append(Row(case, impl, mode, ms, tflops, executed_tflops, peak_gb, tflops / matmul_peak, note))
    assert ms > 0 and peak_gb >= 0
