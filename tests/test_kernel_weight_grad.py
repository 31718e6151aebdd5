"""The backward's fp32 ``dW``: whether ``torch.addmm`` takes 16-bit operands into an fp32 output is
decided by trying that very call once per device type; without it the fallback is said once, with
its precision and memory cost, never silently.

Both answers are simulated on CPU: CPU torch has no ``addmm`` with ``out_dtype`` (the real answer
"absent"); "present" is an ``addmm`` that computes such calls in fp32, as CUDA's does. The kernels
run under the Triton interpreter, in fp16 (its bf16 dots are wrong; fp16 takes the same path)."""

from __future__ import annotations

import logging

import pytest
import torch

import occ_fast.kernels.logprob_triton as logprob_triton
from occ_fast.kernels import linear_logprob

REAL_ADDMM = torch.addmm


def addmm_with_out_dtype(input, mat1, mat2, *, out_dtype=None, out=None):
    """``torch.addmm`` as CUDA builds answer it: 16-bit operands into an fp32 result."""
    if out_dtype is None:
        return REAL_ADDMM(input, mat1, mat2) if out is None else REAL_ADDMM(input, mat1, mat2, out=out)
    result = REAL_ADDMM(input.to(out_dtype), mat1.to(out_dtype), mat2.to(out_dtype))
    return result if out is None else out.copy_(result)


def addmm_without_out_argument(input, mat1, mat2, *, out_dtype=None, out=None):
    """A revision that takes ``out_dtype`` but not together with ``out=``, the call the backward makes."""
    if out_dtype is not None and out is not None:
        raise RuntimeError("addmm: out_dtype is not supported with out=")
    return addmm_with_out_dtype(input, mat1, mat2, out_dtype=out_dtype, out=out)


def addmm_out_dtype_for_fp32_operands_only(input, mat1, mat2, *, out_dtype=None, out=None):
    """A build whose ``out_dtype`` path takes fp32 operands only: the 16-bit call still fails."""
    if out_dtype is not None and mat1.dtype != torch.float32:
        raise RuntimeError(f"addmm: out_dtype={out_dtype} is not supported for {mat1.dtype} operands")
    return addmm_with_out_dtype(input, mat1, mat2, out_dtype=out_dtype, out=out)


@pytest.fixture(autouse=True)
def fresh_probe():
    logprob_triton._has_fp32_out_addmm.cache_clear()
    logprob_triton._say_rounded_weight_grad.cache_clear()
    yield
    logprob_triton._has_fp32_out_addmm.cache_clear()
    logprob_triton._say_rounded_weight_grad.cache_clear()


@pytest.mark.parametrize(
    ("addmm", "present"),
    [
        (None, False),
        (addmm_with_out_dtype, True),
        (addmm_without_out_argument, False),
        (addmm_out_dtype_for_fp32_operands_only, False),
    ],
    ids=["cpu-torch", "fp32-out", "fp32-out-without-out=", "fp32-out-for-fp32-operands-only"],
)
def test_the_probe_tries_the_call_the_backward_makes(monkeypatch, addmm, present):
    if addmm is not None:
        monkeypatch.setattr(torch, "addmm", addmm)
    assert logprob_triton._has_fp32_out_addmm("cpu") is present


def _weight_grad(chunk_rows: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``dW`` of the Triton backward and of fp64, on same-sign rows whose shares add up over chunks."""
    gen = torch.Generator().manual_seed(14)
    m, h, v = 256, 16, 64
    hidden = (torch.randn(m, h, generator=gen) * 0.3 + 1.0).half()
    weight = (torch.randn(v, h, generator=gen) * 0.5).half().requires_grad_()
    targets = torch.randint(0, 4, (m,), generator=gen)
    linear_logprob(hidden, weight, targets, impl="triton", chunk_rows=chunk_rows).logprob.sum().backward()
    w64 = weight.detach().double().requires_grad_()
    z = hidden.double() @ w64.t()
    (z.gather(1, targets[:, None]).squeeze(1) - z.logsumexp(1)).sum().backward()
    return weight.grad, w64.grad


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


def test_fp32_out_addmm_accumulates_dw_in_fp32_without_a_word(monkeypatch, caplog):
    monkeypatch.setattr(torch, "addmm", addmm_with_out_dtype)
    with caplog.at_level(logging.WARNING, logger=logprob_triton.__name__):
        got, want = _weight_grad()
    assert _rel_err(got, want) < 3e-4  # the fp16 rounding of dlogits and of the final dW alone
    assert not caplog.records


def test_without_it_the_rounded_fallback_is_said_once_with_its_cost(monkeypatch, caplog):
    monkeypatch.setattr(logprob_triton, "FALLBACK_VOCAB_ROWS", 24)  # V = 64: three slices, one short
    with caplog.at_level(logging.WARNING, logger=logprob_triton.__name__):
        got, want = _weight_grad()
        _weight_grad()
    assert _rel_err(got, want) < 6e-4  # each chunk's share rounded to fp16 once, summed in fp32
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "rounded to float16" in message and "MiB" in message and "out_dtype" in message
