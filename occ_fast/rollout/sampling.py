"""The sampling distribution and a batch-invariant way to draw from it.

Kept apart from any engine so that the exact distribution whose log-probs are reported is defined
once: temperature, then top-k, then top-p on the top-k-renormalised probabilities (the order used by
HF transformers and vLLM).
"""

from __future__ import annotations

import torch


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Log-probs ``[B, V]`` (fp32) of the distribution sampled from; truncated tokens get -inf.

    temperature 0 is greedy: all mass on the arg-max token.
    """
    logits = logits.float()
    if temperature == 0:
        top_k, temperature = 1, 1.0
    logits = logits / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.log_softmax(dim=-1)


def sample_tokens(logprobs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one token per row by inverting the CDF at ``uniforms`` ``[B]`` in [0, 1).

    One pre-drawn uniform per row and step (instead of noise from a shared generator) makes a row's
    sample independent of which other rows share its batch, so micro-batching and padding never
    change the result.
    """
    probs = logprobs.exp()
    cdf = probs.cumsum(dim=-1)
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # Rounding can put the target at the very top of the CDF; fall back to the last token with mass.
    vocab = probs.shape[-1]
    last_valid = vocab - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(tokens, last_valid)
