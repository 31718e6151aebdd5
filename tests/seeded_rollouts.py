"""The trainer with every prompt's rollouts seeded by the prompt itself (``python tests/seeded_rollouts.py ARGS``).

A data-parallel run samples on each rank from that rank's RNG stream, so its rollouts differ from a
single-process run's. Seeding each prompt's ``n`` completions by its token ids makes the sampled
completions independent of which rank (and which batch) draws the prompt, so a 2-rank run and a
single-process run can be compared step for step on sampled rollouts with reward variance. The
engine still samples from the current weights; only the source of its uniforms changes.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import zlib
from pathlib import Path

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


def record_exit(directory: str) -> None:
    """Let a rank leave two files in ``directory``: ``threads-RANK`` (the threads still running once
    the run has ended) and ``teardown-RANK`` (written only if the interpreter's teardown runs)."""
    rank = os.environ.get("RANK", "0")
    names = sorted(
        Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")
    )
    Path(directory, f"threads-{rank}").write_text("\n".join(names))
    atexit.register(Path(directory, f"teardown-{rank}").write_text, "the interpreter's teardown ran")


if __name__ == "__main__":
    from occ_fast.distributed.process_group import exit_rank
    from occ_fast.train import main

    install()
    code = main(sys.argv[1:])
    if "SEEDED_ROLLOUTS_EXIT_DIR" in os.environ and sys.platform == "linux":
        record_exit(os.environ["SEEDED_ROLLOUTS_EXIT_DIR"])
    exit_rank(code)
