"""The roofline model against hand-computed figures, and the committed results against the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from occ_fast.kernels import roofline, tiling

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "kernel-roofline" / "results.json"
M, H, V = 32768, 4096, 151936


def test_target_shape_on_h100_by_hand():
    e = roofline.estimate(tiling.ARCHS[90], M, H, V, torch.bfloat16)
    gemm = 2 * 32768 * 4096 * 151936  # 40.8 TFLOP per [M, H] x [H, V] product
    assert all(p["flops"] == gemm for p in e["phases"].values()) and len(e["phases"]) == 4
    # 128x128 tiles: 256 row blocks in 32 groups of 8; each group streams the bf16 weight once;
    # hidden once; 16 vocabulary slices of 4 fp32 partials per row.
    assert e["forward_splits"] == 16 and e["forward_programs"] == 256 * 16
    assert e["phases"]["forward"]["bytes"] == 32768 * 4096 * 2 + 32 * 151936 * 4096 * 2 + 16 * 4 * 4 * 32768
    # Row-major order re-reads each 1 MiB hidden block for all 1187 vocabulary tiles.
    assert e["row_major_forward_bytes"] > 300e9
    # Compute-bound: 40.8 TFLOP at 989 TFLOP/s.
    assert e["phases"]["forward"]["ms"] == pytest.approx(gemm / 989e12 * 1e3)
    # Inputs + dH + fp32 dW + max(dlogits chunk of 3456 rows, bf16 dW).
    inputs, grad_h, dw32 = (32768 + 151936) * 4096 * 2, 32768 * 4096 * 2, 151936 * 4096 * 4
    chunk, dw16 = 3456 * 151936 * 2, 151936 * 4096 * 2
    assert e["chunk_rows"] == 3456
    assert e["backward_peak_bytes"] == inputs + grad_h + dw32 + max(chunk, dw16)
    assert e["backward_peak_bytes_if_dw_copy_overlaps_chunk"] == inputs + grad_h + dw32 + chunk + dw16


def test_committed_results_match_the_model():
    committed = json.loads(RESULTS.read_text())
    assert committed == [
        json.loads(json.dumps(roofline.estimate(tiling.ARCHS[cc], M, H, V))) for cc in (90, 80)
    ]
