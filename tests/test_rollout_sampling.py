"""The sampling primitive: draws follow the reported distribution, truncated tokens are never drawn."""

from __future__ import annotations

import torch

from occ_fast.rollout.sampling import sample_tokens, sampling_logprobs


def test_draws_follow_the_sampling_distribution():
    torch.manual_seed(0)
    logits = torch.randn(1, 6) * 2
    logprobs = sampling_logprobs(logits, temperature=0.7, top_k=4, top_p=1.0)
    draws = 40_000
    tokens = sample_tokens(logprobs.expand(draws, -1), torch.rand(draws))
    freq = torch.bincount(tokens, minlength=6).double() / draws
    torch.testing.assert_close(freq, logprobs[0].double().exp(), atol=0.01, rtol=0)
    assert (freq[logprobs[0] == float("-inf")] == 0).all()


def test_uniform_at_the_top_never_picks_a_truncated_token():
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0, -6.0]])
    logprobs = sampling_logprobs(logits, temperature=1.0, top_k=2, top_p=1.0)
    top = torch.tensor([1.0 - 2**-24])
    assert sample_tokens(logprobs, top).item() == 1
    assert sample_tokens(logprobs, torch.zeros(1)).item() == 0
