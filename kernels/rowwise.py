"""The row-wise math shared by the PyTorch paths, written once.

For scaled logits ``z`` (``z = x / T``) of one row, with ``p = softmax(z)``:
``logprob = z[t] - lse``, ``entropy = -sum_j p_j (z_j - lse)``, and for upstream gradients ``g1``
(log-prob) and ``g2`` (entropy)::

    d/dz_j = g1 * (1[j == t] - p_j) - g2 * p_j * (z_j - lse + entropy)

Both are written with ``z - lse`` (= log p) rather than ``z - E_p[z]``: with logits of size 1e3,
``lse - E_p[z]`` cancels catastrophically in fp32 while ``log p`` stays exact for the tokens that
carry the probability mass.

The Triton kernels implement the same formulas tile by tile.
"""

from __future__ import annotations

import torch


def row_stats(z: torch.Tensor, targets: torch.Tensor):
    """Return ``(lse, logprob, entropy)`` for fp32 logits ``z`` ``[m, V]``.

    Targets outside ``[0, V)`` (ignored rows) read column 0; callers mask those rows.
    """
    lse = torch.logsumexp(z, dim=-1)
    logp = z - lse[:, None]
    entropy = -(logp.exp() * logp).sum(-1)
    safe = targets.clamp(0, z.shape[1] - 1)
    logprob = logp.gather(1, safe[:, None]).squeeze(1)
    return lse, logprob, entropy


def logit_grad(z, targets, lse, entropy, g1, g2):
    """Gradient of ``sum(g1 * logprob + g2 * entropy)`` with respect to ``z`` (fp32, ``[m, V]``)."""
    logp = z - lse[:, None]
    grad = -logp.exp() * (g1[:, None] + g2[:, None] * (logp + entropy[:, None]))
    safe = targets.clamp(0, z.shape[1] - 1)
    grad.scatter_add_(1, safe[:, None], g1[:, None])
    return grad
