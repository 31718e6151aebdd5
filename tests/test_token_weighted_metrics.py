"""Token means logged over ranks (``gather_metrics(weights=...)`` with ``UpdateStats.token_weights``):
two ranks holding unequal token counts must log what one process holding all the tokens logs.

Two real gloo processes run every case once (one group for the module); tests/test_distributed.py
checks the same through a whole torchrun training step."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from occ_fast.distributed.collectives import gather_metrics
from occ_fast.training.update_stats import UpdateStats


def _rank(rank: int, store: str, cases: dict[str, list[tuple[dict, dict]]], out: str) -> None:
    """One rank: ``gather_metrics`` of its ``(metrics, weights)`` in every case; rank 0 writes the results."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        got = {name: gather_metrics(ranks[rank][0], weights=ranks[rank][1]) for name, ranks in cases.items()}
        if rank == 0:
            with open(out, "w") as f:
                json.dump(got, f)
    finally:
        dist.destroy_process_group()


def _stats(tokens: float, entropy_sum: float, rows: float, hits: float) -> UpdateStats:
    stats = UpdateStats()
    for key, value in (
        ("count/tokens", tokens),
        ("policy/entropy_sum", entropy_sum),
        ("count/mtp_rows", rows),
        ("mtp/hits", hits),
    ):
        stats.add(key, torch.tensor(value))
    stats.optimizer_steps = 1
    return stats


def test_two_ranks_log_the_entropy_and_mtp_accuracy_one_process_would(gathered):
    """Rank 0: 30 tokens (entropy 2.0 each), 20 MTP rows (18 hits); rank 1: 10 tokens (entropy 0.5),
    5 rows (2 hits). One process: entropy 65 / 40 = 1.625, accuracy 20 / 25 = 0.8. A plain mean of
    the ranks would log 1.25 and 0.65; accuracy weighted by tokens, (27 + 4) / 40 = 0.775."""
    ranks = [_stats(30, 60.0, 20, 18), _stats(10, 5.0, 5, 2)]
    got = gathered["unequal"]
    one = _stats(40, 65.0, 25, 20).summary()
    assert (one["policy/entropy"], one["mtp/accuracy"]) == pytest.approx((1.625, 0.8))
    assert got["policy/entropy"] == pytest.approx(1.625)
    assert got["mtp/accuracy"] == pytest.approx(0.8)
    assert ranks[0].token_weights()["mtp/accuracy"] == 20.0  # rows, not tokens


def test_a_rank_without_tokens_is_left_out_of_a_token_mean(gathered):
    """A rank whose share held no scored token (its mean is NaN or a placeholder) changes nothing;
    a key no rank has tokens for falls back to the plain mean instead of dividing by zero."""
    assert gathered["empty rank"] == {"policy/entropy": 1.5, "spec/x": 0.5}


@pytest.fixture(scope="module")
def gathered(tmp_path_factory) -> dict[str, dict[str, float]]:
    """Every case's result on rank 0 of a real 2-process gloo group."""
    ranks = [_stats(30, 60.0, 20, 18), _stats(10, 5.0, 5, 2)]
    cases = {
        "unequal": [(r.summary(), r.token_weights()) for r in ranks],
        "empty rank": [
            ({"policy/entropy": 1.5, "spec/x": 0.25}, {"policy/entropy": 12.0, "spec/x": 0.0}),
            ({"policy/entropy": math.nan, "spec/x": 0.75}, {"policy/entropy": 0.0, "spec/x": 0.0}),
        ],
    }
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_rank, args=(str(tmp / "store"), cases, str(tmp / "out.json")), nprocs=2)
    return json.loads((tmp / "out.json").read_text())
