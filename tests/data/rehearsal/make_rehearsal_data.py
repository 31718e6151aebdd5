"""Regenerate the rehearsals' problem files: ``python tests/data/rehearsal/make_rehearsal_data.py``.

Rows in DAPO-Math-17k's Parquet layout (``data_source``, a chat ``prompt`` with its instruction,
``ability``, ``reward_model.ground_truth``, ``extra_info.index``), which the ``mimo-7b-dapo-occ`` and
``qwen2.5-fresh-mtp`` presets read and score with ``math`` (math-verify):

- ``dapo_train.parquet``: 8 problems to train on (``--data.path``);
- ``dapo_heldout.parquet``: 4 problems to evaluate on (``--eval.path``).

Most answers are one digit, so that the rehearsals' tiny models (which answer with one digit, see
``tests/rehearsal.py``) earn reward on some samples and not on others; two are fractions, which only
math-verify reads. ``tests/test_rehearsal_presets.py`` checks that the shipped files hold these rows.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
# DAPO-Math-17k's instruction around each problem, verbatim.
INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
PROBLEMS = {
    "dapo_train.parquet": [
        ("What is $3 + 4$?", "7"),
        ("How many positive divisors does $4$ have?", "3"),
        ("Find $x$ if $2x + 1 = 11$.", "5"),
        ("What is the remainder when $17$ is divided by $5$?", "2"),
        ("Compute $\\sqrt{81}$.", "9"),
        ("What is the units digit of $2^{10}$?", "4"),
        ("Write $\\frac{6}{8}$ in lowest terms.", "\\frac{3}{4}"),
        ("How many vertices does a square have?", "4"),
    ],
    "dapo_heldout.parquet": [
        ("What is $9 - 3$?", "6"),
        ("Find the positive $n$ with $n^2 = 64$.", "8"),
        ("What is $\\frac{1}{2} + \\frac{1}{4}$?", "\\frac{3}{4}"),
        ("What is $10 \\div 10$?", "1"),
    ],
}


def rows(name: str) -> list[dict]:
    """The file's rows, as ``pyarrow`` reads them back (``Table.to_pylist``)."""
    return [
        {
            "data_source": "math_dapo",
            "prompt": [{"content": INSTRUCTION.format(problem=problem), "role": "user"}],
            "ability": "MATH",
            "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": f"{Path(name).stem}-{i}"},
        }
        for i, (problem, answer) in enumerate(PROBLEMS[name])
    ]


if __name__ == "__main__":
    for name in PROBLEMS:
        pq.write_table(pa.Table.from_pylist(rows(name)), HERE / name)
        print(f"wrote {HERE / name}")
