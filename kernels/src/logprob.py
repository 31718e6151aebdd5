"""Public entry point: per-token log-probs (and entropy) of a linear head, without ``[M, V]`` logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from . import logprob_torch

Impl = Literal["auto", "triton", "torch_chunked", "torch"]
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CHUNKED_TORCH_BYTES = 256 * 1024 * 1024  # fp32 logits plus a few same-size temporaries per chunk
TRITON_DLOGITS_BYTES = 1024 * 1024 * 1024  # one dlogits buffer; large chunks keep the GEMMs efficient


@dataclass
class LinearLogprobOutput:
    """Per-row ``[M]`` float32 results, 0 on ignored rows.

    ``logprob``: log-prob of the target. ``entropy``: None unless asked. ``max_logprob``: log-prob
    of the most likely token (no grad; free: the kernels keep it anyway), so
    ``logprob >= max_logprob`` marks rows whose target is the argmax (e.g. MTP top-1 acceptance).
    """

    logprob: torch.Tensor
    entropy: torch.Tensor | None = None
    max_logprob: torch.Tensor | None = None


def linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    impl: Impl = "auto",
    chunk_rows: int | None = None,
) -> LinearLogprobOutput:
    """``log softmax(hidden @ weight.T / temperature)[m, targets[m]]`` for every row ``m``.

    Args:
        hidden: ``[M, H]`` rows (fp32, bf16 or fp16; any strides). Stack several heads that share
            ``weight`` into one call (see :func:`occ_fast.kernels.heads_logprob`). On CUDA, fp32
            inputs use 3xTF32 tensor-core products (about fp32 accuracy).
        weight: ``[V, H]`` output matrix, same dtype and device as ``hidden``.
        targets: ``[M]`` int64 token ids; ``ignore_index`` marks rows to skip (output 0, no grad).
        temperature: a positive float, or a ``[M]`` tensor of per-row temperatures (no grad).
        return_entropy: also return the entropy of each row's softmax.
        impl: ``triton`` (CUDA, or the interpreter), ``torch_chunked`` (any device, O(chunk x V)
            memory), ``torch`` (naive reference), ``auto`` (Triton on CUDA, chunked elsewhere).
        chunk_rows: rows per chunk (``torch_chunked``: forward and backward; ``triton``: the
            backward's ``dlogits`` buffer). By default about 256 MiB of fp32 logits per chunk for
            ``torch_chunked`` and a 1 GiB ``dlogits`` buffer (a multiple of 128 rows) for Triton.

    Differentiable with respect to ``hidden`` and ``weight`` through both outputs, with any
    per-row upstream gradients. Math is fp32 whatever the input dtype. No host synchronisation
    on CUDA: out-of-range targets and non-positive temperature tensors trip a device-side assert.
    """
    _check_inputs(hidden, weight, targets)
    inv_temperature = _inverse_temperature(temperature, hidden)
    valid = targets != ignore_index
    _check_targets(targets, valid, weight.shape[0])
    if impl == "auto":
        impl = "triton" if hidden.is_cuda else "torch_chunked"
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(impl, weight)
    elif chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")

    if impl == "torch":
        logprob, entropy, max_logprob = logprob_torch.naive(
            hidden, weight, targets, inv_temperature, valid, return_entropy
        )
    elif impl == "torch_chunked":
        logprob, entropy, max_logprob = logprob_torch.ChunkedLinearLogprob.apply(
            hidden, weight, targets, inv_temperature, valid, return_entropy, chunk_rows
        )
    elif impl == "triton":
        from . import logprob_triton

        logprob, entropy, max_logprob = logprob_triton.TritonLinearLogprob.apply(
            hidden, weight, targets, inv_temperature, valid, return_entropy, chunk_rows
        )
    else:
        raise ValueError(f"impl must be one of auto, triton, torch_chunked, torch; got {impl!r}")
    return LinearLogprobOutput(logprob, entropy if return_entropy else None, max_logprob)


def default_chunk_rows(impl: str, weight: torch.Tensor) -> int:
    vocab = weight.shape[0]
    if impl == "triton":
        rows = TRITON_DLOGITS_BYTES // (weight.element_size() * vocab)
        return max(128, rows // 128 * 128)
    return max(16, CHUNKED_TORCH_BYTES // (4 * vocab))


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [M, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [V, H], got shape {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden [M, H] and weight [V, H] disagree on H: {tuple(hidden.shape)} vs {tuple(weight.shape)}"
        )
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets must be [M] = [{hidden.shape[0]}], got shape {tuple(targets.shape)}")
    if hidden.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"hidden must be float32, bfloat16 or float16, got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be int64 (or int32) token ids, got {targets.dtype}")
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(
            f"hidden, weight and targets must share a device, got {hidden.device}, "
            f"{weight.device}, {targets.device}"
        )
    if weight.shape[0] == 0 or hidden.shape[1] == 0:
        raise ValueError(f"weight must have V >= 1 and H >= 1, got shape {tuple(weight.shape)}")


def _inverse_temperature(temperature: float | torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    m = hidden.shape[0]
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() == 0:
            temperature = temperature.expand(m)
        if temperature.shape != (m,):
            raise ValueError(f"temperature tensor must be [M] = [{m}], got {tuple(temperature.shape)}")
        temperature = temperature.detach().to(device=hidden.device, dtype=torch.float32)
        _device_check(temperature.gt(0).all(), "temperature must be > 0 on every row")
        return temperature.reciprocal()
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.full((m,), 1.0 / float(temperature), dtype=torch.float32, device=hidden.device)


def _check_targets(targets: torch.Tensor, valid: torch.Tensor, vocab: int) -> None:
    in_range = (targets >= 0) & (targets < vocab)
    _device_check((in_range | ~valid).all(), f"targets must lie in [0, {vocab}) or equal ignore_index")


def _device_check(condition: torch.Tensor, message: str) -> None:
    """Raise at once on CPU; on CUDA assert on the device so the call never syncs with the host."""
    if condition.is_cuda:
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise ValueError(message)
