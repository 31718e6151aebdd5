"""The speculative-decoding forecast from the trainer's MTP hits, against a step-by-step replay."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import small_qwen2_mtp

from occ_fast.monitoring.spec_forecast import draft_counts, forecast, one_token_schedule
from occ_fast.policy.batching import Sample, make_micro_batches
from occ_fast.policy.forward import policy_logprobs


def replay(drafts: list[bool], accepted: list[bool]) -> list[bool]:
    """One-token speculative decoding over one row: start at the first draft position; after an
    accepted draft skip one position (the bonus token), else move on by one."""
    visited = [False] * len(drafts)
    t = next((i for i, d in enumerate(drafts) if d), len(drafts))
    while t < len(drafts) and drafts[t]:
        visited[t] = True
        t += 2 if accepted[t] else 1
    return visited


rows = st.lists(
    st.tuples(st.integers(0, 5), st.lists(st.booleans(), min_size=1, max_size=30)), min_size=1, max_size=4
)


@given(rows)
@settings(max_examples=200, deadline=None)
def test_the_vectorised_schedule_is_the_step_by_step_replay(spec):
    width = max(p + len(a) for p, a in spec) + 2
    drafts = torch.zeros(len(spec), width, dtype=torch.bool)
    accepted = torch.zeros_like(drafts)
    for b, (prompt, acc) in enumerate(spec):
        drafts[b, prompt : prompt + len(acc)] = True
        accepted[b, prompt : prompt + len(acc)] = torch.tensor(acc)
    got = one_token_schedule(drafts, accepted)
    for b in range(len(spec)):
        assert got[b].tolist() == replay(drafts[b].tolist(), accepted[b].tolist())


def test_two_sequences_packed_in_one_row_are_scheduled_apart():
    drafts = torch.tensor([[0, 1, 1, 1, 0, 0, 1, 1, 1]], dtype=torch.bool)
    accepted = torch.tensor([[0, 1, 0, 1, 0, 0, 1, 1, 0]], dtype=torch.bool)
    assert one_token_schedule(drafts, accepted).int().tolist() == [[0, 1, 0, 1, 0, 0, 1, 0, 1]]


def test_forecast_arithmetic():
    sums = {
        "count/spec_drafts": 10.0,
        "count/spec_visited": 8.0,
        "count/spec_visited_accepted": 2.0,
        "count/spec_hits_d1": 5.0,
        "count/spec_rows_d1": 12.0,
        "count/spec_accepted_d1": 4.0,
        "count/spec_hits_d2": 3.0,
        "count/spec_rows_d2": 10.0,
        "count/spec_accepted_d2": 2.0,
    }
    assert forecast(sums) == pytest.approx(
        {
            "mtp/top1_depth1": 5 / 12,
            "mtp/top1_depth2": 3 / 10,
            "spec/forecast_acceptance_rate_n1": 2 / 8,  # the schedule's positions
            "spec/forecast_mean_acceptance_length_n1": 1 + 2 / 8,
            "spec/forecast_acceptance_rate_n2": (4 + 2) / 10 / 2,  # every position
            "spec/forecast_mean_acceptance_length_n2": 1 + (4 + 2) / 10,
            # per draft position, as vLLM logs them (rollout/spec_acceptance_rate_pos{i}): pos i is
            # accepted when depths 1..i+1 all hit
            "spec/forecast_acceptance_rate_pos0": 4 / 10,
            "spec/forecast_acceptance_rate_pos1": 2 / 10,
        }
    )
    assert forecast({}) == {}


def test_draft_counts_of_a_real_forward_match_a_token_by_token_count():
    torch.manual_seed(0)
    model = small_qwen2_mtp(vocab=11, num_mtp=2).eval()  # a small vocabulary: hits happen
    gen = torch.Generator().manual_seed(1)
    seqs = [(3, 9), (1, 6), (4, 1), (2, 12)]
    samples = [
        Sample(
            torch.randint(0, 11, (p,), generator=gen).tolist(),
            torch.randint(0, 11, (r,), generator=gen).tolist(),
            torch.zeros(r),
            0.0,
        )
        for p, r in seqs
    ]
    (micro,) = make_micro_batches(samples, token_budget=64, batch_size=len(samples))  # padded rows
    with torch.no_grad():
        out = policy_logprobs(model, micro, temperature=1.0)
        full = model(micro.input_ids, attention_mask=micro.attention_mask, position_ids=micro.position_ids)
    counts = {k: float(v) for k, v in draft_counts(out).items()}
    # By hand: per sequence, depth k's argmax at row j-1-k against token j.
    drafts = visited = visited_accepted = 0
    accepted = [0, 0]
    hits, rows_k = [0, 0], [0, 0]
    for b, s in enumerate(samples):
        ids = s.prompt_ids + s.response_ids
        first = len(s.prompt_ids)

        def hit(k, j, b=b, ids=ids, first=first):
            row = j - 1 - k
            if j < first or j >= len(ids) or row < 0:
                return None
            logits = full.mtp_hidden[k - 1][b, row] @ full.mtp_weight.T
            return bool(logits.argmax() == ids[j])

        for k in (1, 2):
            for j in range(first, len(ids)):
                h = hit(k, j)
                if h is not None:
                    rows_k[k - 1] += 1
                    hits[k - 1] += h
        positions = [t for t in range(first, len(ids) - 1) if t >= 1]
        acc = {t: bool(hit(1, t + 1)) for t in positions}
        drafts += len(positions)
        for t in positions:
            accepted[0] += acc[t]
            accepted[1] += acc[t] and bool(hit(2, t + 2))
        seen = replay([True] * len(positions), [acc[t] for t in positions])
        visited += sum(seen)
        visited_accepted += sum(v and acc[t] for v, t in zip(seen, positions))
    assert counts == {
        "count/spec_drafts": drafts,
        "count/spec_hits_d1": hits[0],
        "count/spec_rows_d1": rows_k[0],
        "count/spec_accepted_d1": accepted[0],
        "count/spec_visited": visited,
        "count/spec_visited_accepted": visited_accepted,
        "count/spec_hits_d2": hits[1],
        "count/spec_rows_d2": rows_k[1],
        "count/spec_accepted_d2": accepted[1],
    }
    assert 0 < accepted[0] < drafts  # real signal


def test_vllm_per_position_acceptance_is_logged_beside_the_forecast():
    """With two draft tokens vLLM counts accepted tokens per draft position; the step's metrics carry
    them (rollout/spec_acceptance_rate_pos{i}) beside the trainer's forecast for the same positions."""
    from types import SimpleNamespace

    from occ_fast.rollout.vllm_engine import acceptance_stats
    from occ_fast.training.step import engine_stats

    before = {"drafts": 10, "draft_tokens": 20, "accepted_tokens": 9, "accepted_tokens_per_pos": [6, 3]}
    after = {"drafts": 20, "draft_tokens": 40, "accepted_tokens": 21, "accepted_tokens_per_pos": [14, 7]}
    engine = SimpleNamespace(last_spec_stats=acceptance_stats(before, after), last_drafter_probe={})
    stats = engine_stats(engine)
    assert stats["rollout/spec_acceptance_rate_pos0"] == pytest.approx(8 / 10)
    assert stats["rollout/spec_acceptance_rate_pos1"] == pytest.approx(4 / 10)
    sums = {"count/spec_drafts": 10.0, "count/spec_visited": 8.0, "count/spec_visited_accepted": 2.0}
    for k, (hits, accepted) in enumerate([(5.0, 4.0), (3.0, 2.0)], start=1):
        sums |= {
            f"count/spec_hits_d{k}": hits,
            f"count/spec_rows_d{k}": 12.0,
            f"count/spec_accepted_d{k}": accepted,
        }
    predicted = forecast(sums)
    assert [k for k in predicted if "_pos" in k] == [
        "spec/forecast_acceptance_rate_pos0",
        "spec/forecast_acceptance_rate_pos1",
    ]
    one_token = forecast({k: v for k, v in sums.items() if not k.endswith("d2")})
    assert not any("_pos" in k for k in one_token)  # one draft token: the _n1 forecast says it
