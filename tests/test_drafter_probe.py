"""The drafter probe's pure parts (occ_fast/rollout/drafter_probe.py), without vLLM: the greedy replay
of speculative decoding with the trainer's MTP heads, counted by hand, and the check that refuses a
stale drafter after a weight sync."""

from __future__ import annotations

import pytest
import torch
from model_helpers import VOCAB, tiny_mtp_model

from occ_fast.rollout.drafter_probe import (
    DRAFTER_TOLERANCES,
    DrafterSyncError,
    check_drafter,
    probe_prompts,
    replay_greedy_drafts,
)


@torch.no_grad()
def _heads_that_always_hit(num_mtp: int):
    """A zero lm_head: every logit ties, so every head's argmax holds every token (each draft hits)."""
    model = tiny_mtp_model(num_mtp=num_mtp).eval()
    model.base.get_output_embeddings().weight.zero_()
    return model


def test_replay_counts_greedy_drafts_by_hand():
    """n = 2, every draft accepted. A draft after token t covers t+1..t+2 up to the last completion
    token; the next draft follows the token vLLM adds after the accepted run (t + a + 1):
    completion of 5: drafts at 0 (accepts 2) and 3 (accepts 1, the last token): 2 drafts, 3 accepted;
    of 6: at 0 and 3, 2 each: 2 drafts, 4 accepted; of 1: no draft; of 2: at 0, 1 accepted."""
    prompts = probe_prompts(VOCAB)
    completions = [[(7 * i + 1) % VOCAB for i in range(length)] for length in (5, 6, 1, 2)]
    got = replay_greedy_drafts(_heads_that_always_hit(2), prompts, completions, n=2)
    assert got == {"drafts": 5, "draft_tokens": 10, "accepted_tokens": 8}


def test_replay_with_one_draft_token_accepts_each_position_once():
    """n = 1, every draft hits: a draft every other token. Completion of 5: drafts at 0 and 2
    (1 and 3 accepted; 4 is the last token); of 4: at 0 and 2 (1 and 3, the last, accepted)."""
    prompts = probe_prompts(VOCAB)[:2]
    got = replay_greedy_drafts(_heads_that_always_hit(1), prompts, [[3] * 5, [4] * 4], n=1)
    assert got == {"drafts": 4, "draft_tokens": 4, "accepted_tokens": 4}


def test_a_stale_drafter_accepting_less_than_the_replay_is_refused():
    """A drafter left with old weights after a sync accepts fewer drafts than the trainer's heads
    predict: refused, with both rates, whichever side is lower."""
    replayed = {"drafts": 5, "draft_tokens": 10, "accepted_tokens": 8}
    stale = {"drafts": 9, "draft_tokens": 18, "accepted_tokens": 2}
    with pytest.raises(
        DrafterSyncError, match=r"after sync 2: acceptance 0\.111 measured vs 0\.800 replayed"
    ):
        check_drafter(stale, replayed, tolerance=DRAFTER_TOLERANCES["bfloat16"], context=" after sync 2")
    with pytest.raises(DrafterSyncError, match=r"acceptance 0\.800 measured vs 0\.111 replayed"):
        check_drafter(replayed, stale, tolerance=DRAFTER_TOLERANCES["float32"], context="")


def test_a_drafter_within_the_dtype_tolerance_passes_with_its_rates():
    measured = {"drafts": 5, "draft_tokens": 10, "accepted_tokens": 7}
    replayed = {"drafts": 4, "draft_tokens": 8, "accepted_tokens": 6}
    rates = check_drafter(measured, replayed, tolerance=DRAFTER_TOLERANCES["bfloat16"], context="")
    assert rates == pytest.approx({"measured": 0.7, "replayed": 0.75})
    with pytest.raises(DrafterSyncError):  # 0.6 against 0.75: past a 0.1 tolerance
        check_drafter({**measured, "accepted_tokens": 6}, replayed, tolerance=0.1, context="")


def test_vllm_drafting_nothing_is_refused_not_divided_by():
    """An engine that drafted no tokens (speculative decoding off after a restart) is a failed probe."""
    replayed = {"drafts": 5, "draft_tokens": 10, "accepted_tokens": 8}
    for measured in ({"drafts": 0, "draft_tokens": 0, "accepted_tokens": 0}, {}):
        with pytest.raises(DrafterSyncError, match="vLLM drafted no tokens in the drafter probe"):
            check_drafter(measured, replayed, tolerance=0.15, context="")
