"""Built-in synthetic arithmetic task: exact answers, no files, a held-out split disjoint from training.

A problem belongs to the eval split iff a stable hash of its canonical form (operands sorted for
``+`` and ``*``, so ``3+5`` and ``5+3`` share a split) falls below ``eval_fraction``. The split is
thus a property of the problem, independent of seeds and sample sizes: no training draw can ever
produce an eval problem.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from occ_fast.data.records import PromptRecord

Split = Literal["train", "eval"]
SolutionStyle = Literal["answer", "carries"]
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class ArithmeticTask:
    """Multi-digit ``a op b`` problems; ``digits`` is the operand length (the difficulty).

    ``template`` must contain ``{a}``, ``{op}`` and ``{b}``; the default ends with ``=`` so the
    completion starts with the answer (what ``occ_fast.rewards.arithmetic_reward`` checks).
    """

    digits: int = 3
    ops: tuple[str, ...] = ("+", "-", "*")
    eval_fraction: float = 0.1
    template: str = "{a} {op} {b} ="
    solution: SolutionStyle = "answer"

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 18:
            raise ValueError(f"ArithmeticTask.digits must be in [1, 18], got {self.digits}")
        if not self.ops or any(op not in OPS for op in self.ops):
            raise ValueError(f"ArithmeticTask.ops must be a non-empty subset of {tuple(OPS)}, got {self.ops}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"ArithmeticTask.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if any(f"{{{name}}}" not in self.template for name in ("a", "op", "b")):
            raise ValueError(
                f"ArithmeticTask.template must contain {{a}}, {{op}} and {{b}}, got {self.template!r}"
            )
        if self.solution not in ("answer", "carries"):
            raise ValueError(f"ArithmeticTask.solution must be 'answer' or 'carries', got {self.solution!r}")
        if self.solution == "carries" and self.ops != ("+",):
            raise ValueError(
                f"ArithmeticTask.solution='carries' is defined for ops ('+',) only, got {self.ops}"
            )

    def split_of(self, a: int, op: str, b: int) -> Split:
        """Which split the problem ``a op b`` belongs to (fixed by the problem alone)."""
        if op in ("+", "*"):
            a, b = min(a, b), max(a, b)
        digest = hashlib.blake2b(f"{a}{op}{b}".encode(), digest_size=8).digest()
        return "eval" if int.from_bytes(digest, "big") / 2**64 < self.eval_fraction else "train"

    def sample(self, split: Split, n: int, seed: int = 0) -> list[PromptRecord]:
        """``n`` distinct problems of ``split``, the same for the same (task, split, n, seed)."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        low = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        high = 10**self.digits - 1
        rng = random.Random(f"{seed}/{split}")
        seen: set[tuple[int, str, int]] = set()
        records: list[PromptRecord] = []
        max_draws = 100 * n + 10_000
        for _ in range(max_draws):
            if len(records) == n:
                break
            op = rng.choice(self.ops)
            a, b = rng.randint(low, high), rng.randint(low, high)
            if (a, op, b) in seen or self.split_of(a, op, b) != split:
                continue
            seen.add((a, op, b))
            prompt = self.template.format(a=a, op=op, b=b)
            solution = worked_addition(a, b) if self.solution == "carries" else None
            records.append(
                PromptRecord(prompt, str(OPS[op](a, b)), f"synthetic:{split}:{len(records)}", solution)
            )
        if len(records) < n:
            space = (high - low + 1) ** 2 * len(self.ops)
            raise ValueError(
                f"cannot draw {n} distinct {split!r} problems with digits={self.digits}, ops={self.ops} "
                f"(about {space} problems in all, eval_fraction={self.eval_fraction}): raise digits or lower n"
            )
        return records


def worked_addition(a: int, b: int) -> str:
    """Column-by-column addition from the right, ``x+y+carry=sum`` per column, then ``\\boxed{a+b}``."""
    if a < 0 or b < 0:
        raise ValueError(f"worked_addition needs non-negative operands, got {a} and {b}")
    xs, ys = str(a)[::-1], str(b)[::-1]
    columns, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        columns.append(f"{x}+{y}+{carry}={total}")
        carry = total // 10
    return " ".join(columns) + f" \\boxed{{{a + b}}}"
