"""The fused head runs in the compute dtype: an fp32 model under bf16 autocast must not hand the
kernel fp32 rows and weight (on a GPU that is the 3xTF32 path, several times slower than bf16 MMA)."""

from __future__ import annotations

import torch
from model_helpers import VOCAB, tiny_mtp_model

from occ_fast.kernels import heads_logprob
from occ_fast.model import build_head_rows
from occ_fast.policy.batching import MicroBatch
from occ_fast.policy.forward import policy_logprobs


def test_an_fp32_model_under_bf16_autocast_feeds_the_head_in_bf16():
    """The trunk's final norm hands fp32 rows out under autocast, and lm_head is fp32: the head
    gets both rounded to bf16, so its log-probs are exactly those of the bf16 rows and weight (not
    the fp32 ones), and lm_head's gradient still reaches the fp32 weight."""
    model = tiny_mtp_model().train()
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(6))
    ones = torch.ones_like(ids)
    micro = MicroBatch(
        input_ids=ids,
        position_ids=torch.arange(10).expand(2, 10),
        attention_mask=ones,
        response_mask=ones.bool(),
        advantages=torch.zeros(2, 10),
        rollout_logprobs=torch.zeros(2, 10),
        num_samples=2,
    )
    got = policy_logprobs(model, micro, temperature=1.0, autocast_dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, attention_mask=ones, position_ids=micro.position_ids)
    rows = build_head_rows(out, ids, micro.response_mask)
    assert rows.hiddens[0].dtype == out.weight.dtype == torch.float32  # what the head used to get
    bf16 = heads_logprob([h.bfloat16() for h in rows.hiddens], out.weight.bfloat16(), rows.targets)
    fp32 = heads_logprob(rows.hiddens, out.weight, rows.targets)
    for head, want, unwanted in zip(got.heads, bf16, fp32, strict=True):
        assert torch.equal(head.logprob, want.logprob)
        assert not torch.equal(head.logprob, unwanted.logprob)
    got.heads[0].logprob.sum().backward()
    grad = model.base.get_output_embeddings().weight.grad
    assert grad.dtype == torch.float32 and grad.abs().sum() > 0
