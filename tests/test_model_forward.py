"""MTP forward against an independent reference; per-token alignment; padded vs packed layouts."""

import pytest
import torch
from model_helpers import (
    SEQUENCES,
    make_sequences,
    packed_batch,
    padded_batch,
    reference_mtp,
    tiny_mtp_model,
)

from occ_fast.model import build_head_rows, head_logprobs, make_layout


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_forward_matches_plain_pytorch_reference(arch):
    model = tiny_mtp_model(arch, num_mtp=2)
    seqs = make_sequences()
    ids, attn, pos, _, where = packed_batch(seqs)
    with torch.no_grad():
        out = model(ids, attention_mask=attn, position_ids=pos)
    for s, seq in enumerate(seqs):
        trunk, mtp = reference_mtp(model, seq)
        cols = [c for _, c in where[s]]
        torch.testing.assert_close(out.hidden[0, cols], trunk, atol=1e-5, rtol=1e-5)
        for k, ref in enumerate(mtp, start=1):
            # Rows whose token i+k lies in the next sequence are never scored; the reference has none.
            torch.testing.assert_close(
                out.mtp_hidden[k - 1][0, cols[: len(seq) - k]], ref, atol=1e-5, rtol=1e-5
            )
    assert out.weight is model.base.lm_head.weight


def _expected_logprob(hidden_row: torch.Tensor, weight: torch.Tensor, token: int) -> float:
    return torch.log_softmax((hidden_row @ weight.T).double(), -1)[token].item()


def test_alignment_main_row_j_minus_1_mtp_row_j_minus_2():
    model = tiny_mtp_model("qwen2", num_mtp=2)
    seqs = make_sequences()
    ids, attn, pos, resp, where = packed_batch(seqs)
    with torch.no_grad():
        out = model(ids, attention_mask=attn, position_ids=pos)
        rows = build_head_rows(out, ids, resp)
        lps = [rows.to_dense(lp.logprob) for lp in head_logprobs(out, rows)]
    masks = [rows.to_dense(rows.valid(k).float()) for k in range(3)]
    heads = [out.hidden, *out.mtp_hidden]
    checked = 0
    for s, (prompt, _) in enumerate(SEQUENCES):
        for offset in range(len(seqs[s])):
            _, col = where[s][offset]
            for k in range(3):
                has_row = offset >= prompt and offset - 1 - k >= 0
                assert masks[k][0, col].item() == float(has_row), (s, offset, k)
                if has_row:
                    want = _expected_logprob(heads[k][0, col - 1 - k], out.weight, ids[0, col].item())
                    assert lps[k][0, col].item() == pytest.approx(want, abs=1e-5)
                    checked += 1
                else:
                    assert lps[k][0, col].item() == 0.0
    # Padding and prompts are never scored.
    assert (masks[0] * (1 - resp)).sum() == 0
    # Lost rows: prompt 2 -> depth 2 of its first response token; prompt 1 -> depth 1 of its first
    # response token, depth 2 of its first two.
    assert checked == 3 * sum(r for _, r in SEQUENCES) - 4


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_packed_and_padded_layouts_give_the_same_per_token_logprobs(arch):
    model = tiny_mtp_model(arch, num_mtp=2)
    seqs = make_sequences()
    layouts = {
        "packed": packed_batch(seqs),
        "right": padded_batch(seqs),
        "left": padded_batch(seqs, left=True),
    }
    per_token = {}
    for name, batch in layouts.items():
        if name == "packed":
            ids, attn, pos, resp, where = batch
        else:
            (ids, attn, resp, where), pos = batch, None
        with torch.no_grad():
            out = model(ids, attention_mask=attn, position_ids=pos)
            rows = build_head_rows(out, ids, resp)
            lps = [rows.to_dense(lp.logprob) for lp in head_logprobs(out, rows)]
        masks = [rows.to_dense(rows.valid(k).float()) for k in range(3)]
        per_token[name] = torch.tensor(
            [[[lp[b, c], m[b, c]] for lp, m in zip(lps, masks)] for w in where for b, c in w]
        )
    assert per_token["packed"][:, :, 1].sum() > 0
    torch.testing.assert_close(per_token["right"], per_token["packed"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_token["left"], per_token["packed"], atol=1e-5, rtol=1e-5)


def test_no_row_of_a_sequence_reads_its_packed_neighbour():
    """Every row of sequences 0 and 2, even the unscored last rows whose token i+k would lie in the
    next sequence, is unchanged when the tokens of sequence 1 change."""
    model = tiny_mtp_model("qwen2", num_mtp=2)
    ids, attn, pos, _, where = packed_batch(make_sequences())
    changed = ids.clone()
    middle = [c for _, c in where[1]]
    changed[0, middle] = (changed[0, middle] + 1) % 96
    with torch.no_grad():
        a = model(ids, attention_mask=attn, position_ids=pos)
        b = model(changed, attention_mask=attn, position_ids=pos)
    others = [c for s in (0, 2) for _, c in where[s]]
    for x, y in zip([a.hidden, *a.mtp_hidden], [b.hidden, *b.mtp_hidden]):
        torch.testing.assert_close(x[0, others], y[0, others], atol=0, rtol=0)
    assert not torch.equal(a.mtp_hidden[0][0, middle], b.mtp_hidden[0][0, middle])


def test_eager_attention_matches_sdpa():
    model = tiny_mtp_model("qwen2", num_mtp=2)
    ids, attn, pos, _, _ = packed_batch(make_sequences())
    with torch.no_grad():
        sdpa = model(ids, attention_mask=attn, position_ids=pos)
        model.base.set_attn_implementation("eager")
        eager = model(ids, attention_mask=attn, position_ids=pos)
    valid = attn[0].bool()
    for x, y in zip([sdpa.hidden, *sdpa.mtp_hidden], [eager.hidden, *eager.mtp_hidden]):
        torch.testing.assert_close(x[0, valid], y[0, valid], atol=1e-5, rtol=1e-5)


def test_layout_segments_from_positions_and_padding():
    ids = torch.zeros(2, 7, dtype=torch.long)
    attn = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    pos = torch.tensor([[0, 1, 0, 1, 2, 0, 0], [0, 0, 0, 1, 2, 3, 4]])
    layout = make_layout(ids, attn, pos)
    assert layout.segment_ids.tolist() == [[0, 0, 1, 1, 1, -1, -1], [-1, -1, 0, 0, 0, 0, 0]]
    left = make_layout(ids, attn)  # no positions: one sequence per row, positions count real tokens
    assert left.position_ids[1].tolist() == [0, 0, 0, 1, 2, 3, 4]
    assert layout.same_sequence_ahead(1)[0].tolist() == [True, False, True, True, False, False, False]
    with pytest.raises(ValueError, match="attention_mask must match"):
        make_layout(ids, attn[:, :3])
