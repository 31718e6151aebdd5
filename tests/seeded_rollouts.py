"""The trainer with every prompt's rollouts seeded by the prompt itself (``python tests/seeded_rollouts.py ARGS``).

A data-parallel run samples on each rank from that rank's RNG stream, so its rollouts differ from a
single-process run's. Seeding each prompt's ``n`` completions by its token ids makes the sampled
completions independent of which rank (and which batch) draws the prompt, so a 2-rank run and a
single-process run can be compared step for step on sampled rollouts with reward variance. The
engine still samples from the current weights; only the source of its uniforms changes.
"""

from __future__ import annotations

import dataclasses
import sys
import zlib

from occ_fast.rollout import TransformersEngine

_generate = TransformersEngine.generate


def generate_seeded_per_prompt(self, prompt_token_ids, params, *, progress=None):
    if params.seed is not None:  # evaluation seeds its own calls
        return _generate(self, prompt_token_ids, params, progress=progress)
    results = []
    for index, prompt in enumerate(prompt_token_ids):
        seed = zlib.crc32(bytes(str(list(map(int, prompt))), "ascii"))
        for result in _generate(self, [prompt], dataclasses.replace(params, seed=seed)):
            results.append(dataclasses.replace(result, prompt_index=index))
    if progress is not None:
        progress(len(results), len(results))
    return results


def install(monkeypatch=None) -> None:
    if monkeypatch is None:
        TransformersEngine.generate = generate_seeded_per_prompt
    else:
        monkeypatch.setattr(TransformersEngine, "generate", generate_seeded_per_prompt)


if __name__ == "__main__":
    from occ_fast.train import main

    install()
    sys.exit(main(sys.argv[1:]))
