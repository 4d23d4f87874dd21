"""Online prompt filter: hand-worked groups, a loop reference, and input errors.

The filter takes one reward and one truncation flag per sequence and has no padded
positions, so the padding-invariance check of the other functions does not apply;
instead the test checks that samples of other groups never change a group's decision.
"""
import pytest
import torch

from prime_megatron.reward.filter import FilterResult, filter_groups


def test_hand_worked_groups():
    # K = 4. Accuracies: [1,1,1,1] -> 1.0 (too easy), [1,0,0,0] -> 0.25 (keep),
    # [0,0,0,0] -> 0.0 (too hard), [1,1,1,0] -> 0.75 (keep, but one truncated response).
    rewards = torch.tensor([1.0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0])
    truncated = torch.tensor([False] * 15 + [True])
    res = filter_groups(rewards, truncated, group_size=4)
    assert res.keep.tolist() == [False, True, False, True]
    assert res.reasons == ["accuracy 1.000 > acc_high 0.8", None, "accuracy 0.000 < acc_low 0.2", None]
    torch.testing.assert_close(res.accuracy, torch.tensor([1.0, 0.25, 0.0, 0.75], dtype=torch.float64))
    assert res.sample_mask(4).tolist() == [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4
    # drop_truncated: the last group goes too, and every reason that applies is listed.
    truncated[0] = True
    res = filter_groups(rewards, truncated, group_size=4, drop_truncated=True)
    assert res.keep.tolist() == [False, True, False, False]
    assert res.reasons[0] == "accuracy 1.000 > acc_high 0.8; 1 of 4 responses truncated"
    assert res.reasons[3] == "1 of 4 responses truncated"


def test_bounds_are_inclusive_despite_rounding():
    # K = 5: 1/5 = 0.2 and 4/5 = 0.8 are exactly on the bounds of [0.2, 0.8] and kept,
    # although 4/5 in floating point is not the literal 0.8.
    rewards = torch.tensor([1.0, 0, 0, 0, 0, 1, 1, 1, 1, 0])
    res = filter_groups(rewards, torch.zeros(10, dtype=torch.bool), group_size=5)
    assert res.keep.tolist() == [True, True]
    # Soft code rewards: pass fractions [0.1, 0.2, 0.15] mean 0.15 < 0.2 -> dropped.
    res = filter_groups(torch.tensor([0.1, 0.2, 0.15]), torch.zeros(3), group_size=3)
    assert res.keep.tolist() == [False] and res.reasons[0].startswith("accuracy 0.150 < acc_low")


def _loop_filter(rewards, truncated, k, low, high, drop_truncated):
    keep = []
    for g0 in range(0, len(rewards), k):
        acc = sum(rewards[g0:g0 + k]) / k
        ok = low - 1e-9 <= acc <= high + 1e-9
        if drop_truncated and any(truncated[g0:g0 + k]):
            ok = False
        keep.append(ok)
    return keep


@pytest.mark.parametrize("drop_truncated", [False, True])
def test_matches_loop_reference(drop_truncated):
    g = torch.Generator().manual_seed(0)
    k = 8
    rewards = torch.randint(0, 2, (64 * k,), generator=g).float()
    # Skew some groups towards all-right / all-wrong so that both bounds are exercised.
    rewards[: 8 * k] = 1.0
    rewards[8 * k: 16 * k] = 0.0
    truncated = torch.rand(64 * k, generator=g) < 0.05
    res = filter_groups(rewards, truncated, group_size=k, acc_low=0.25, acc_high=0.75, drop_truncated=drop_truncated)
    want = _loop_filter(rewards.tolist(), truncated.tolist(), k, 0.25, 0.75, drop_truncated)
    assert res.keep.tolist() == want
    assert [r is None for r in res.reasons] == want


def test_decision_depends_only_on_own_group():
    rewards = torch.tensor([1.0, 0, 1, 0, 0, 0, 0, 0])
    base = filter_groups(rewards, torch.zeros(8), group_size=4)
    rewards[4:] = 1.0
    other = filter_groups(rewards, torch.zeros(8), group_size=4)
    assert base.keep[0] == other.keep[0] and base.reasons[0] == other.reasons[0]
    assert isinstance(base, FilterResult)


@pytest.mark.parametrize(
    "rewards, truncated, kwargs, message",
    [
        (torch.zeros(6), torch.zeros(6), {"group_size": 4}, "not divisible by group_size"),
        (torch.zeros(8), torch.zeros(7), {"group_size": 4}, r"truncated must have shape \[B\] = \(8,\)"),
        (torch.full((4,), 2.0), torch.zeros(4), {"group_size": 2}, r"outcome_rewards must lie in \[0, 1\]"),
        (torch.zeros(4, 1), torch.zeros(4), {"group_size": 2}, r"outcome_rewards must be a 1-D tensor of shape \[B\]"),
        (torch.zeros(4), torch.full((4,), 3.0), {"group_size": 2}, "truncated must be bool or 0/1"),
        (torch.zeros(4), torch.zeros(4), {"group_size": 2, "acc_low": 0.9, "acc_high": 0.1}, "acc_high must lie in"),
        (torch.zeros(4), torch.zeros(4), {"group_size": 0}, "group_size must be an int >= 1"),
    ],
)
def test_bad_input_names_the_argument(rewards, truncated, kwargs, message):
    with pytest.raises(ValueError, match=message):
        filter_groups(rewards, truncated, **kwargs)
