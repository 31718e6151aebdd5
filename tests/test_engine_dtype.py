"""``rollout.dtype`` auto: the vLLM engine computes in the trainer's dtype, so that the weight-sync
probe's threshold for that dtype applies and rollout and trainer log-probs agree to its precision."""

from __future__ import annotations

import pytest
import torch

from occ_fast.config import parse_config
from occ_fast.training.engine import engine_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object only: no GPU needed


@pytest.mark.parametrize(
    ("argv", "device", "want"),
    [
        (["--model.dtype", "auto"], CPU, "float32"),  # auto is fp32 on CPU
        (["--model.dtype", "auto"], CUDA, "bfloat16"),  # ... and bf16 on CUDA
        (["--model.dtype", "bf16"], CPU, "bfloat16"),
        (["--model.dtype", "fp32"], CUDA, "float32"),
        # bf16 autocast acts on CUDA only (as setup resolves it): a CPU run still computes in fp32
        (["--model.dtype", "fp32", "--train.bf16-autocast"], CPU, "float32"),
        (["--model.dtype", "fp32", "--train.bf16-autocast"], CUDA, "bfloat16"),
    ],
)
def test_auto_is_the_trainer_compute_dtype(argv, device, want):
    assert engine_dtype(parse_config(["--rollout.engine", "vllm", *argv]), device) == want


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_an_explicit_rollout_dtype_is_kept_whatever_the_trainer_computes_in(dtype):
    """fp16 on a bf16 trainer (or fp32 on CPU) is the user's call: not overridden."""
    for argv, device in (([], CPU), (["--model.dtype", "bf16"], CUDA)):
        cfg = parse_config(["--rollout.engine", "vllm", "--rollout.dtype", dtype, *argv])
        assert engine_dtype(cfg, device) == dtype
