"""Regenerate the sample problem files next to this script: ``python occ_fast/data/samples/make_samples.py``.

Both come from the built-in synthetic task of the ``tiny`` preset (two-digit addition, prompt
``"a + b ="``, integer answer), so the tiny model's tokenizer and warm start fit them:

- ``addition_train.jsonl``: 64 problems of the task's training split, to train on
  (``--data.source file --data.path ...``);
- ``addition_heldout.jsonl``: 32 problems of its held-out split, which no training draw of the task
  ever produces, to evaluate on (``python -m occ_fast.eval --benchmarks ...``, ``--eval.path ...``).

The draws are seeded, so the files are the same on every run; ``tests/test_newcomer_commands.py``
checks that the shipped files are what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from occ_fast.data import ArithmeticTask

HERE = Path(__file__).resolve().parent
SAMPLES = {"addition_train.jsonl": ("train", 64, 1), "addition_heldout.jsonl": ("eval", 32, 0)}


def sample_text(split: str, n: int, seed: int) -> str:
    """One ``{"prompt", "answer"}`` object per line: the layout ``data.path`` and ``occ_fast.eval`` read."""
    records = ArithmeticTask(digits=2, ops=("+",)).sample(split, n, seed=seed)
    return "".join(json.dumps({"prompt": r.prompt, "answer": r.answer}) + "\n" for r in records)


if __name__ == "__main__":
    for name, (split, n, seed) in SAMPLES.items():
        (HERE / name).write_text(sample_text(split, n, seed), encoding="utf-8")
        print(f"wrote {HERE / name}")
