"""The trainer whose rank ``$NAN_ROLLOUTS_RANK`` gets a NaN and an infinite log-prob in its second
rollout batch (``python tests/nan_rollouts.py ARGS``, a torchrun worker): the first group's first and
third completions, as ``tests/test_faults_rollout_logprobs.py`` injects them in one process."""

from __future__ import annotations

import os
import sys

from occ_fast.rollout import TransformersEngine

_generate = TransformersEngine.generate
_calls = {"n": 0}


def generate_with_nan(self, *args, **kwargs):
    results = _generate(self, *args, **kwargs)
    _calls["n"] += 1
    if _calls["n"] == 2 and os.environ.get("RANK") == os.environ["NAN_ROLLOUTS_RANK"]:
        results[0].logprobs[0] = float("nan")
        results[2].logprobs[-1] = float("inf")
    return results


if __name__ == "__main__":
    from occ_fast.distributed.process_group import exit_rank
    from occ_fast.train import main

    TransformersEngine.generate = generate_with_nan
    exit_rank(main(sys.argv[1:]))
