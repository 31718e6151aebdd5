"""Rollouts with a NaN and an infinite log-prob: from the engine's second rollout batch (step 1),
the first group's first completion gets a NaN and its third an infinity. :func:`install` puts them
in a test's process; ``python tests/nan_rollouts.py ARGS`` is the trainer with them on rank
``$NAN_ROLLOUTS_RANK`` only (a torchrun worker)."""

from __future__ import annotations

import os
import sys

from occ_fast.rollout import TransformersEngine


def install(monkeypatch=None, *, every_call: bool = False, rank: str | None = None) -> None:
    """In the second rollout batch, or in every batch from it on (``every_call``); on every rank, or
    on ``rank`` alone (its ``RANK``)."""
    real_generate = TransformersEngine.generate
    calls = {"n": 0}

    def generate(self, *args, **kwargs):
        results = real_generate(self, *args, **kwargs)
        calls["n"] += 1
        due = calls["n"] == 2 or (every_call and calls["n"] > 2)
        if due and rank in (None, os.environ.get("RANK")):
            results[0].logprobs[0] = float("nan")
            results[2].logprobs[-1] = float("inf")
        return results

    if monkeypatch is None:
        TransformersEngine.generate = generate
    else:
        monkeypatch.setattr(TransformersEngine, "generate", generate)


if __name__ == "__main__":
    from occ_fast.distributed.process_group import exit_rank
    from occ_fast.train import main

    install(rank=os.environ["NAN_ROLLOUTS_RANK"])
    exit_rank(main(sys.argv[1:]))
