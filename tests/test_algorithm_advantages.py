import pytest
import torch

from occ_fast.algorithm import broadcast_to_tokens, grpo_advantages, overlong_penalty, zero_variance_groups


def test_grpo_hand_worked_with_zero_std_group():
    # group 0 [1,0,0,1]: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.5773503 -> +-0.5 / 0.5773513
    # group 1 [1,1,1,1]: zero std -> advantage 0, reported
    # group 2 [0,1,2,1]: mean 1, unbiased std sqrt(2 / 3) = 0.8164966 -> +-1 / 0.8164976
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 1.0])
    out = grpo_advantages(rewards, group_size=4)
    a, b = 0.8660239, 1.2247434
    expected = torch.tensor([a, -a, -a, a, 0, 0, 0, 0, -b, 0, b, 0])
    torch.testing.assert_close(out.advantages, expected, rtol=1e-6, atol=1e-6)
    assert out.zero_std.tolist() == [False, True, False]
    assert out.num_zero_std == 1


def test_grpo_group_size_one_gives_zero_not_nan():
    out = grpo_advantages(torch.tensor([0.3, 1.0]), group_size=1)
    assert out.advantages.tolist() == [0.0, 0.0]
    assert out.num_zero_std == 2


def test_zero_variance_group_with_an_inexact_mean_gets_exactly_zero():
    """Seven rewards of 0.7 (a shaped reward, e.g. with an overlong penalty): in fp32 their mean is
    not 0.7 exactly, so (R - mean) / (std + 1e-6) would be about 0.06, not 0."""
    out = grpo_advantages(torch.tensor([0.7] * 7 + [0.0] * 6 + [1.0]), group_size=7)
    assert out.advantages[:7].tolist() == [0.0] * 7
    assert out.zero_std.tolist() == [True, False]


def test_grpo_rejects_groups_that_do_not_divide():
    with pytest.raises(ValueError, match="group_size=3"):
        grpo_advantages(torch.zeros(4), group_size=3)


def test_zero_variance_groups_for_dynamic_sampling():
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    assert zero_variance_groups(rewards, 2).tolist() == [True, False, True]


def test_broadcast_to_tokens_zero_on_padding():
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert broadcast_to_tokens(adv, mask).tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def test_overlong_penalty_values():
    # L_max 10, buffer 4: free up to 6, then -(len - 6) / 4, -1 at and beyond 10
    got = overlong_penalty([0, 6, 7, 8, 9, 10, 13], max_length=10, cache_length=4)
    assert got.tolist() == [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0]


def test_overlong_penalty_rejects_bad_buffer():
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty([1], max_length=10, cache_length=0)
