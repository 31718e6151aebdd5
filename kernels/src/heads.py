"""Several heads that share one output matrix, in one call.

The main head reads trunk rows, each MTP head reads its own rows; all predict through the same
``lm_head``. Stacking their rows into one :func:`linear_logprob` call reads ``weight`` once per
tile for every head and accumulates one ``dW``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .logprob import Impl, LinearLogprobOutput, linear_logprob


def heads_logprob(
    hiddens: Sequence[torch.Tensor],
    weight: torch.Tensor,
    targets: Sequence[torch.Tensor],
    *,
    temperature: float | Sequence[torch.Tensor] = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    impl: Impl = "auto",
    chunk_rows: int | None = None,
) -> list[LinearLogprobOutput]:
    """Per-head :class:`LinearLogprobOutput` for heads ``k = 0..K`` (rows ``[M_k, H]``, targets ``[M_k]``).

    ``temperature`` is one float for all heads or one ``[M_k]`` tensor per head.
    """
    if len(hiddens) == 0:
        raise ValueError("heads_logprob needs at least one head")
    if len(targets) != len(hiddens):
        raise ValueError(f"got {len(hiddens)} hidden tensors but {len(targets)} target tensors")
    for k, (h, t) in enumerate(zip(hiddens, targets)):
        if h.dim() != 2 or t.shape != (h.shape[0],):
            raise ValueError(
                f"head {k}: hidden must be [M_k, H] and targets [M_k], got {tuple(h.shape)} and {tuple(t.shape)}"
            )
    sizes = [h.shape[0] for h in hiddens]
    if not isinstance(temperature, (int, float)):
        if len(temperature) != len(hiddens):
            raise ValueError(f"got {len(hiddens)} heads but {len(temperature)} temperature tensors")
        temperature = torch.cat(list(temperature))
    out = linear_logprob(
        torch.cat(list(hiddens)),
        weight,
        torch.cat(list(targets)),
        temperature=temperature,
        ignore_index=ignore_index,
        return_entropy=return_entropy,
        impl=impl,
        chunk_rows=chunk_rows,
    )
    logprobs = out.logprob.split(sizes)
    entropies = out.entropy.split(sizes) if out.entropy is not None else [None] * len(sizes)
    max_logprobs = out.max_logprob.split(sizes)
    return [LinearLogprobOutput(*parts) for parts in zip(logprobs, entropies, max_logprobs)]
