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
    """
    row_max = z.amax(dim=-1)
    shifted = z - row_max[:, None]
    log_sumexp = torch.log(torch.exp(shifted).sum(-1))
    logp = shifted - log_sumexp[:, None]
    entropy = -(logp.exp() * logp).sum(-1)
    safe = targets.clamp(0, z.shape[1] - 1)
    logprob = logp.gather(1, safe[:, None]).squeeze(1)
    return row_max, log_sumexp, logprob, entropy


def logit_grad(z, targets, row_max, log_sumexp, entropy, g1, g2):
    """Gradient of ``sum(g1 * logprob + g2 * entropy)`` with respect to ``z`` (fp32, ``[m, V]``)."""
    logp = (z - row_max[:, None]) - log_sumexp[:, None]
    grad = -logp.exp() * (g1[:, None] + g2[:, None] * (logp + entropy[:, None]))
    safe = targets.clamp(0, z.shape[1] - 1)
    grad.scatter_add_(1, safe[:, None], g1[:, None])
    return grad
