"""The row-wise math shared by the PyTorch paths, written once.

For scaled logits ``z`` (``z = x / T``) of one row, with ``p = softmax(z)``:
``logprob = z[t] - lse``, ``entropy = -sum_j p_j (z_j - lse)``, and for upstream gradients ``g1``
(log-prob) and ``g2`` (entropy)::

    d/dz_j = g1 * (1[j == t] - p_j) - g2 * p_j * (z_j - lse + entropy)

Everything is written with ``log p = (z - max) - log(sum exp(z - max))``: with logits of size
1e3, both ``lse - E_p[z]`` and ``z - lse`` cancel catastrophically in fp32 (one ulp of 1e3 is
6e-5), while ``z - max`` is exact for the tokens that carry the probability mass. So the
per-row state kept between forward and backward is ``(max, log_sumexp)``, not ``lse``.

The Triton kernels implement the same formulas tile by tile.
"""

from __future__ import annotations

import torch


def row_stats(z: torch.Tensor, targets: torch.Tensor):
    """Return ``(row_max, log_sumexp, logprob, entropy)`` for fp32 logits ``z`` ``[m, V]``.

    Targets outside ``[0, V)`` (ignored rows) read column 0; callers mask those rows.
    ``log_softmax`` computes ``(z - max) - log(sum exp(z - max))`` in one fused pass; its value
    at the argmax is exactly ``-log_sumexp``, so no second reduction over ``exp`` is needed.
    """
    row_max = z.amax(dim=-1)
    logp = torch.log_softmax(z, dim=-1)
    log_sumexp = -logp.amax(dim=-1)
    entropy = -_row_dot(logp.exp(), logp)
    safe = targets.clamp(0, z.shape[1] - 1)
    logprob = logp.gather(1, safe[:, None]).squeeze(1)
    return row_max, log_sumexp, logprob, entropy


def logit_grad(z, targets, row_max, log_sumexp, entropy, g1, g2):
    """Gradient of ``sum(g1 * logprob + g2 * entropy)`` with respect to ``z`` (fp32, ``[m, V]``).

    Overwrites ``z`` (the caller's recomputed logits) to keep one ``[m, V]`` temporary.
    """
    logp = z.sub_(row_max[:, None]).sub_(log_sumexp[:, None])
    p = logp.exp()
    grad = logp.add_(entropy[:, None]).mul_(g2[:, None]).add_(g1[:, None]).mul_(p).neg_()
    safe = targets.clamp(0, z.shape[1] - 1)
    grad.scatter_add_(1, safe[:, None], g1[:, None])
    return grad


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` without an ``[m, V]`` temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(a.shape[0])
