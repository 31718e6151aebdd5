"""Token means logged over ranks (``gather_metrics(weights=...)`` with ``UpdateStats.token_weights``):
two ranks holding unequal token counts must log what one process holding all the tokens logs.

Two real gloo ranks under torchrun run every case once (one group for the module; this file is also
their worker, ``__main__``); tests/test_distributed.py checks the same through a whole training step."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from gloo_group import gloo_ranks, run_two_ranks

from occ_fast.distributed.collectives import gather_metrics
from occ_fast.distributed.process_group import exit_rank
from occ_fast.training.update_stats import UpdateStats

TIMEOUT_S = 120


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


def _cases() -> dict[str, list[tuple[dict, dict]]]:
    """Each case's ``(metrics, weights)`` of rank 0 and rank 1."""
    ranks = [_stats(30, 60.0, 20, 18), _stats(10, 5.0, 5, 2)]
    return {
        "unequal": [(r.summary(), r.token_weights()) for r in ranks],
        "empty rank": [
            ({"policy/entropy": 1.5, "spec/x": 0.25}, {"policy/entropy": 12.0, "spec/x": 0.0}),
            ({"policy/entropy": math.nan, "spec/x": 0.75}, {"policy/entropy": 0.0, "spec/x": 0.0}),
        ],
    }


@pytest.fixture(scope="module")
def gathered(tmp_path_factory) -> dict[str, dict[str, float]]:
    """Every case's result on rank 0 of a real 2-rank gloo group."""
    out = tmp_path_factory.mktemp("gloo")
    run_two_ranks(__file__, out, TIMEOUT_S)
    return json.loads((out / "gathered.json").read_text())


def worker(out: Path) -> None:
    """One rank: ``gather_metrics`` of its ``(metrics, weights)`` in every case; rank 0 writes them."""
    with gloo_ranks() as info:
        got = {
            name: gather_metrics(ranks[info.rank][0], weights=ranks[info.rank][1])
            for name, ranks in _cases().items()
        }
        if info.rank == 0:
            (out / "gathered.json").write_text(json.dumps(got))


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
    exit_rank(0)  # as the trainer's ranks leave (occ_fast/distributed/process_group.py)
