"""The interpreter patches let kernels that use autotune and libdevice run on CPU."""

import pytest
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from triton_interpreter import interpreting

pytestmark = pytest.mark.skipif(not interpreting(), reason="patches apply to the Triton interpreter only")


@triton.autotune(configs=[triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 64})], key=["n"])
@triton.jit
def _log1p_scaled(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(x_ptr + offs, mask=ok, other=0.0)
    tl.store(y_ptr + offs, libdevice.log1p(x) * scale + libdevice.rsqrt(x + 1.0), mask=ok)


def test_autotuned_libdevice_kernel_matches_torch():
    x = torch.rand(101) * 10
    y = torch.empty_like(x)
    _log1p_scaled[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, y, x.numel(), 0.5)
    expected = torch.log1p(x) * 0.5 + torch.rsqrt(x + 1.0)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
