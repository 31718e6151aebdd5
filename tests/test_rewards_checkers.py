import pytest

from occ_fast.rewards import RewardFnImportError, RewardScorer, arithmetic_reward, load_reward_fn
from occ_fast.rewards.math_answer import math_reward


@pytest.mark.parametrize(
    "completion,truth,expected",
    [
        ("We get \\boxed{42}.", "42", 1.0),
        ("so the answer is \\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 1.0),
        ("Adding up, the answer is 0.5", "\\frac{1}{2}", 1.0),
        ("Answer: 34", "34", 1.0),
        ("first 34, but finally \\boxed{35}", "34", 0.0),
        ("I think it is 35", "34", 0.0),
        ("", "34", 0.0),
    ],
)
def test_math_reward(completion, truth, expected):
    assert math_reward(completion, truth) == expected


@pytest.mark.parametrize(
    "completion,truth,expected",
    [
        (" 579 and then more 12", "579", 1.0),
        ("-46", "-46", 1.0),
        ("work: 3 + 4 ... \\boxed{ 7 }", "7", 1.0),
        ("\\boxed{7} wait no \\boxed{8}", "7", 0.0),
        ("5790", "579", 0.0),
        ("no digits", "1", 0.0),
    ],
)
def test_arithmetic_reward_is_exact(completion, truth, expected):
    assert arithmetic_reward(completion, truth) == expected


def test_arithmetic_rejects_non_integer_truth():
    with pytest.raises(ValueError, match="'1.5'"):
        arithmetic_reward("1", "1.5")


@pytest.mark.parametrize(
    "spec,match",
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("occ_fast.rewards.arithmetic:nope", "has no attribute 'nope'"),
        ("occ_fast.rewards.arithmetic:re", "not callable|is not callable"),
        ("justaname", "package.module:function"),
    ],
)
def test_load_reward_fn_errors_name_the_spec(spec, match):
    with pytest.raises(RewardFnImportError, match=match):
        load_reward_fn(spec)


def test_in_process_scorer_counts_errors():
    with RewardScorer("arithmetic", num_workers=0) as scorer:
        result = scorer.score(["3", "4", "5"], ["3", "x", "6"])
    assert result.rewards == [1.0, 0.0, 0.0]
    assert (result.num_errors, result.num_timeouts) == (1, 0)
    assert result.errors[0].startswith("item 1: ValueError")
