"""The chunked path's extra memory does not grow with M x V (the naive path's does).

Peak memory is the growth of the process's resident high-water mark while one fwd+bwd runs
(``occ_fast.kernels.memory``), in a fresh interpreter per measurement, with glibc's mmap threshold fixed
so that freed chunk buffers go back to the system (glibc otherwise raises the threshold after the
first large free and keeps later buffers on a heap that only grows). Sizes are chosen so that
the ``[M, V]`` logits (fp32) are over 100 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from occ_fast.kernels import memory

_MEASURE = r"""
import json, sys, torch
from occ_fast.kernels import memory
from occ_fast.kernels import linear_logprob
m, v, h, impl = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
hidden = torch.randn(m, h, requires_grad=True)
weight = torch.randn(v, h, requires_grad=True)
targets = torch.randint(0, v, (m,))
hidden.grad = torch.zeros_like(hidden)
weight.grad = torch.zeros_like(weight)
memory.reset_peak_rss()
before = memory.rss_bytes()
out = linear_logprob(hidden, weight, targets, return_entropy=True, impl=impl, chunk_rows=128)
(out.logprob.sum() + out.entropy.sum()).backward()
print(json.dumps({"extra_bytes": memory.peak_rss_bytes() - before}))
"""


def extra_peak_bytes(m: int, v: int, h: int, impl: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(m), str(v), str(h), impl],
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_bytes"]


@pytest.mark.skipif(not memory.supported(), reason="needs Linux's /proc/self/clear_refs")
def test_chunked_peak_does_not_grow_with_rows_times_vocab():
    v, h = 20_000, 16
    small, large = 256, 2048
    logits_growth = (large - small) * v * 4  # fp32 bytes the [M, V] logits add
    chunked_growth = extra_peak_bytes(large, v, h, "torch_chunked") - extra_peak_bytes(
        small, v, h, "torch_chunked"
    )
    naive_growth = extra_peak_bytes(large, v, h, "torch") - extra_peak_bytes(small, v, h, "torch")
    # The measurement sees the naive path's logits (so it can fail) ...
    assert naive_growth > logits_growth, (naive_growth, logits_growth)
    # ... and the chunked path adds only O(M) row statistics, far below one copy of the logits.
    assert chunked_growth < 0.05 * logits_growth, (chunked_growth, logits_growth)
