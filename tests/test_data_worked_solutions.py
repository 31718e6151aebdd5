"""The synthetic task's worked solutions (data.solution='carries') and the preset built on them."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from occ_fast.config import ConfigError, parse_config
from occ_fast.data import ArithmeticTask
from occ_fast.data.synthetic import worked_addition
from occ_fast.rewards import arithmetic_reward
from occ_fast.training.build import build_tokenizer, synthetic_task
from occ_fast.training.warm_start import supervised_samples

COLUMN = re.compile(r"(\d)\+(\d)\+([01])=(\d+)")


@pytest.mark.parametrize(
    ("a", "b", "solution"),
    [
        (47, 85, r"7+5+0=12 4+8+1=13 \boxed{132}"),
        (4738, 2596, r"8+6+0=14 3+9+1=13 7+5+1=13 4+2+1=7 \boxed{7334}"),
        (5, 1234, r"5+4+0=9 0+3+0=3 0+2+0=2 0+1+0=1 \boxed{1239}"),
        (9999, 1, r"9+1+0=10 9+0+1=10 9+0+1=10 9+0+1=10 \boxed{10000}"),
        (0, 0, r"0+0+0=0 \boxed{0}"),
    ],
)
def test_worked_addition_by_hand(a, b, solution):
    assert worked_addition(a, b) == solution


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_every_column_is_the_digit_sum_with_the_carry_and_the_box_is_the_sum(a, b):
    text = worked_addition(a, b)
    columns = text.split(" ")[:-1]
    assert len(columns) == max(len(str(a)), len(str(b)))
    carry = 0
    for i, column in enumerate(columns):
        x, y, c, total = map(int, COLUMN.fullmatch(column).groups())
        assert (x, y, c) == (a // 10**i % 10, b // 10**i % 10, carry)
        assert total == x + y + c
        carry = total // 10
    assert text.endswith(f"\\boxed{{{a + b}}}")
    assert arithmetic_reward(f" {text}", str(a + b)) == 1.0
    assert arithmetic_reward(f" {text}", str(a + b + 1)) == 0.0


def test_negative_operands_are_refused():
    with pytest.raises(ValueError, match="non-negative operands, got -1 and 3"):
        worked_addition(-1, 3)


def test_carries_records_carry_their_worked_solution():
    records = ArithmeticTask(digits=4, ops=("+",), solution="carries").sample("train", 50, seed=3)
    for r in records:
        a, _, b, _ = r.prompt.split()
        assert r.solution == worked_addition(int(a), int(b)) == r.reference_completion
        assert r.answer == str(int(a) + int(b))
    plain = ArithmeticTask(digits=4, ops=("+",)).sample("train", 50, seed=3)
    assert [r.prompt for r in plain] == [r.prompt for r in records]  # the style changes the completion only
    assert all(r.solution is None and r.reference_completion == r.answer for r in plain)


def test_carries_is_refused_for_other_operators():
    with pytest.raises(
        ValueError, match=r"ArithmeticTask.solution='carries' is defined for ops \('\+',\) only"
    ):
        ArithmeticTask(ops=("+", "*"), solution="carries")
    with pytest.raises(ValueError, match="ArithmeticTask.solution must be"):
        ArithmeticTask(solution="steps")
    with pytest.raises(ConfigError, match=r"data.solution='carries' is defined for data.ops \['\+'\] only"):
        parse_config(["--data.solution", "carries", "--data.ops", "+", "-"])


def test_warm_start_teaches_the_worked_solution():
    cfg = parse_config(["--preset", "carries"])
    tokenizer = build_tokenizer(cfg)
    records = synthetic_task(cfg).sample("train", 4, seed=0)
    for record, sample in zip(records, supervised_samples(tokenizer, records)):
        assert sample.response_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(sample.response_ids[:-1]) == f" {record.solution}"


def test_carries_preset_fits_every_worked_solution_in_its_rollout_budget():
    cfg = parse_config(["--preset", "carries"])
    assert (cfg.data.digits, tuple(cfg.data.ops), cfg.data.solution) == (3, ("+",), "carries")
    tokenizer = build_tokenizer(cfg)
    task = synthetic_task(cfg)
    records = task.sample("train", cfg.data.train_problems, seed=0) + task.sample("eval", 256, seed=0)
    lengths = [len(s.response_ids) for s in supervised_samples(tokenizer, records)]  # EOS included
    assert max(lengths) <= cfg.rollout.max_new_tokens
    assert min(lengths) > 30  # the long answer the preset exists for
