"""Plain-PyTorch implementations of the linear log-prob op.

``naive`` materialises the ``[M, V]`` logits and lets autograd do the rest: the reference for tests
and benchmarks. ``ChunkedLinearLogprob`` keeps the same contract with peak extra memory
O(chunk x V): it walks the rows in chunks in the forward, keeps only per-row statistics, and
recomputes each chunk's logits in the backward. It is the CPU training path.
"""

from __future__ import annotations

import torch

from .rowwise import logit_grad, row_stats


def naive(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    inv_temperature: torch.Tensor,
    valid: torch.Tensor,
    return_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Reference: full fp32 logits, ``log_softmax`` and autograd."""
    logits = (hidden.float() @ weight.float().t()) * inv_temperature[:, None]
    logp = torch.log_softmax(logits, dim=-1)
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    logprob = logp.gather(1, safe_targets[:, None]).squeeze(1)
    logprob = torch.where(valid, logprob, torch.zeros_like(logprob))
    entropy = None
    if return_entropy:
        entropy = -(logp.exp() * logp).sum(-1)
        entropy = torch.where(valid, entropy, torch.zeros_like(entropy))
    max_logprob = torch.where(valid, logp.detach().amax(-1), torch.zeros_like(logprob))
    return logprob, entropy, max_logprob.detach()


class ChunkedLinearLogprob(torch.autograd.Function):
    """Row-chunked forward and recomputing backward; fp32 math whatever the input dtype."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temperature, valid, return_entropy, chunk_rows):
        weight32 = weight.float()
        m = hidden.shape[0]
        logprob = hidden.new_zeros(m, dtype=torch.float32)
        entropy = hidden.new_zeros(m, dtype=torch.float32)
        row_max = hidden.new_zeros(m, dtype=torch.float32)
        log_sumexp = hidden.new_zeros(m, dtype=torch.float32)
        for start in range(0, m, chunk_rows):
            rows = slice(start, min(start + chunk_rows, m))
            z = torch.mm(hidden[rows].float(), weight32.t()).mul_(inv_temperature[rows, None])
            row_max[rows], log_sumexp[rows], logprob[rows], entropy[rows] = row_stats(z, targets[rows])
        ctx.save_for_backward(hidden, weight, targets, inv_temperature, valid, row_max, log_sumexp, entropy)
        ctx.chunk_rows = chunk_rows
        zero = torch.zeros_like(logprob)
        max_logprob = torch.where(valid, -log_sumexp, zero)
        ctx.mark_non_differentiable(max_logprob)
        return (
            torch.where(valid, logprob, zero),
            torch.where(valid, entropy, zero) if return_entropy else None,
            max_logprob,
        )

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy, _grad_max_logprob):
        hidden, weight, targets, inv_temperature, valid, row_max, log_sumexp, entropy = ctx.saved_tensors
        weight32 = weight.float()
        g1, g2 = _row_grads(grad_logprob, grad_entropy, valid)
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        m = hidden.shape[0]
        for start in range(0, m, ctx.chunk_rows):
            rows = slice(start, min(start + ctx.chunk_rows, m))
            h = hidden[rows].float()
            z = torch.mm(h, weight32.t()).mul_(inv_temperature[rows, None])
            dlogits = logit_grad(
                z, targets[rows], row_max[rows], log_sumexp[rows], entropy[rows], g1[rows], g2[rows]
            )
            dlogits.mul_(inv_temperature[rows, None])
            torch.mm(dlogits, weight32, out=grad_hidden[rows])
            grad_weight.addmm_(dlogits.t(), h)
        return (
            grad_hidden.to(hidden.dtype) if ctx.needs_input_grad[0] else None,
            grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
            None,
        )


def _row_grads(grad_logprob, grad_entropy, valid):
    """Per-row upstream gradients as fp32, zero on ignored rows (autograd may pass ``None``)."""
    zeros = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    g1 = zeros if grad_logprob is None else torch.where(valid, grad_logprob.float(), zeros)
    g2 = zeros if grad_entropy is None else torch.where(valid, grad_entropy.float(), zeros)
    return g1, g2
