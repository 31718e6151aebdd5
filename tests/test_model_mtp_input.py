"""Which trunk state the first MTP depth reads is a property of the checkpoint format: MiMo before the
final norm, DeepSeek after it (the states vLLM's MiMo and DeepSeek models hand their MTP drafters).

The trunk's final-norm weights are set far from 1, so that the two conventions give different drafts;
with unit weights they coincide (RMSNorm of an RMS-normed vector is the vector)."""

import pytest
import torch
from model_helpers import make_sequences, packed_batch, reference_mtp, tiny_mtp_model

from occ_fast.model.naming import HIDDEN_INPUT


def _spread_final_norm(model, seed=5):
    gen = torch.Generator().manual_seed(seed)
    norm = model.base.model.norm.weight
    with torch.no_grad():
        norm.copy_(0.3 + 2.0 * torch.rand(norm.shape, generator=gen))  # in [0.3, 2.3]
    return model


def _mtp_logits(model, ids, attn, pos):
    with torch.no_grad():
        out = model(ids, attention_mask=attn, position_ids=pos)
    return [h @ out.mtp_weight.T for h in out.mtp_hidden]


@pytest.mark.parametrize("naming", ["mimo", "deepseek"])
def test_mtp_heads_read_the_trunk_state_of_their_format(naming):
    model = _spread_final_norm(tiny_mtp_model("qwen2", num_mtp=2, naming=naming))
    seqs = make_sequences()
    ids, attn, pos, _, where = packed_batch(seqs)
    logits = _mtp_logits(model, ids, attn, pos)
    head = model.base.lm_head.weight
    for s, seq in enumerate(seqs):
        _, ref = reference_mtp(model, seq)
        cols = [c for _, c in where[s]]
        for k, ref_k in enumerate(ref, start=1):
            torch.testing.assert_close(
                logits[k - 1][0, cols[: len(seq) - k]], ref_k @ head.T, atol=1e-4, rtol=1e-4
            )


def test_the_two_conventions_give_different_mtp_logits():
    """Otherwise the test above could not tell them apart."""
    model = _spread_final_norm(tiny_mtp_model("qwen2", num_mtp=1, naming="mimo"))
    ids, attn, pos, _, _ = packed_batch(make_sequences())
    mimo = _mtp_logits(model, ids, attn, pos)[0]
    model.naming = "deepseek"  # same weights, the other format
    deepseek = _mtp_logits(model, ids, attn, pos)[0]
    assert (mimo - deepseek).abs().max() > 0.1
    assert HIDDEN_INPUT == {"mimo": "pre_norm", "deepseek": "post_norm"}


def test_depth_one_ignores_the_token_at_the_first_position():
    """vLLM's drafters zero the token embedding on the row at position 0: changing token 1 of a
    sequence must not change the depth-1 row 0 output (it changes the trunk's row 1 only)."""
    model = tiny_mtp_model("qwen2", num_mtp=1)
    ids = torch.tensor([[5, 9, 11, 3, 7]])
    other = ids.clone()
    other[0, 1] = 40
    with torch.no_grad():
        a, b = model(ids).mtp_hidden[0], model(other).mtp_hidden[0]
    torch.testing.assert_close(a[0, 0], b[0, 0])
    assert (a[0, 1] - b[0, 1]).abs().max() > 1e-3
