"""Outcome-only baselines (RLOO, GRPO, REINFORCE++): hand-worked numbers, loop reference,
padding invariance and input errors."""
import math

import pytest
import torch

from prime_megatron.advantage import (
    compute_grpo_advantages,
    compute_reinforce_pp_advantages,
    compute_rloo_outcome_advantages,
)
from tests.advantage.inputs import random_mask, with_garbage
from tests.advantage.loop_reference import loop_grpo, loop_reinforce_pp, loop_rloo_outcome


def test_rloo_hand_worked():
    # K = 4, rewards [1, 0, 0, 1]: a right sample's baseline is mean(0, 0, 1) = 1/3, so
    # 1 - 1/3 = 2/3; a wrong one's is mean(1, 0, 1) = 2/3, so 0 - 2/3 = -2/3.
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    adv = compute_rloo_outcome_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), mask, group_size=4)
    t = 2 / 3
    torch.testing.assert_close(adv, torch.tensor([[t, t], [-t, 0.0], [-t, -t], [t, 0.0]]))


def test_grpo_hand_worked():
    # [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.577350, so
    # +-0.5 / (0.577350 + 1e-6) = +-0.866024.
    adv = compute_grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.ones(4, 1), group_size=4)
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.866024, -0.866024, -0.866024, 0.866024]), rtol=0, atol=2e-6)
    # Without std normalisation: +-0.5.
    adv = compute_grpo_advantages(
        torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.ones(4, 1), group_size=4, normalize_by_std=False
    )
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_reinforce_pp_hand_worked():
    # Rewards [1, 0] on rows of length 2 and 1, gamma 1: returns [[1, 1], [0, pad]].
    # Whitening over the 3 tokens [1, 1, 0]: mean 2/3, unbiased var ((1/3)^2*2 + (2/3)^2)/2 = 1/3,
    # std 0.577350: [(1/3)/0.57735, same, (-2/3)/0.57735] = [0.577350, 0.577350, -1.154701].
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = compute_reinforce_pp_advantages(torch.tensor([1.0, 0.0]), mask)
    torch.testing.assert_close(adv, torch.tensor([[0.577350, 0.577350], [-1.154701, 0.0]]), rtol=0, atol=1e-6)
    # With a KL penalty 0.5 * [[0.2, 0.4], [0.2, pad]] and gamma 1: token rewards
    # [[-0.1, 1 - 0.2], [0 - 0.1]] -> returns [[0.7, 0.8], [-0.1]]; mean 0.466667,
    # var ((0.233333)^2 + (0.333333)^2 + (0.566667)^2)/2 = 0.243333, std 0.493288:
    # [0.473016, 0.675737, -1.148753].
    kl = torch.tensor([[0.2, 0.4], [0.2, 7.0]])
    adv = compute_reinforce_pp_advantages(torch.tensor([1.0, 0.0]), mask, token_kl=kl, kl_coef=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.473016, 0.675737], [-1.148753, 0.0]]), rtol=0, atol=2e-6)


def _random(seed, batch=12, length=30):
    g = torch.Generator().manual_seed(seed)
    mask = random_mask(batch, length, g)
    rewards = torch.rand(batch, generator=g, dtype=torch.float64)
    kl = torch.randn(batch, length, generator=g, dtype=torch.float64) * 0.1
    return g, mask, rewards, kl


def test_match_loop_references():
    _, mask, rewards, kl = _random(0)
    # float64 everywhere: differences are summation order only.
    tol = {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(
        compute_rloo_outcome_advantages(rewards, mask, group_size=4), loop_rloo_outcome(rewards, mask, group_size=4), **tol
    )
    for normalize in (True, False):
        torch.testing.assert_close(
            compute_grpo_advantages(rewards, mask, group_size=3, normalize_by_std=normalize),
            loop_grpo(rewards, mask, group_size=3, normalize_by_std=normalize),
            **tol,
        )
    for options in ({}, {"gamma": 0.9, "token_kl": kl, "kl_coef": 0.1}, {"group_size": 4, "gamma": 0.97}):
        torch.testing.assert_close(
            compute_reinforce_pp_advantages(rewards, mask, **options), loop_reinforce_pp(rewards, mask, **options), **tol
        )


def test_padding_values_do_not_change_results():
    g, mask, rewards, kl = _random(1)
    assert torch.equal(
        compute_rloo_outcome_advantages(rewards, mask, group_size=4),
        compute_rloo_outcome_advantages(rewards, mask.bool(), group_size=4),
    )
    assert torch.equal(
        compute_grpo_advantages(rewards, mask, group_size=4), compute_grpo_advantages(rewards, mask.bool(), group_size=4)
    )
    clean = compute_reinforce_pp_advantages(rewards, mask, token_kl=kl, kl_coef=0.1, gamma=0.9)
    dirty = compute_reinforce_pp_advantages(rewards, mask, token_kl=with_garbage(kl, mask, g), kl_coef=0.1, gamma=0.9)
    assert torch.equal(clean, dirty)
    for adv in (clean, compute_grpo_advantages(rewards, mask, group_size=4)):
        assert bool((adv[mask == 0] == 0).all())


def test_identical_rewards_give_zero_not_nan():
    # A group whose samples are all right has std 0: GRPO's eps keeps 0 / eps = 0.
    adv = compute_grpo_advantages(torch.ones(4), torch.ones(4, 2), group_size=4)
    assert torch.equal(adv, torch.zeros(4, 2)) and not math.isnan(adv.sum().item())


@pytest.mark.parametrize(
    "fn, kwargs, message",
    [
        (compute_rloo_outcome_advantages, {"group_size": 3}, "not divisible by group_size"),
        (compute_grpo_advantages, {"group_size": 1}, "group_size must be an int >= 2"),
        (compute_reinforce_pp_advantages, {"kl_coef": 0.1}, r"token_kl \[B, T\] is required"),
        (compute_reinforce_pp_advantages, {"kl_coef": 0.1, "token_kl": torch.zeros(4, 2)}, r"token_kl must have shape"),
        (compute_reinforce_pp_advantages, {"gamma": -0.1}, "gamma must lie in"),
    ],
)
def test_bad_input_names_the_argument(fn, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fn(torch.zeros(4), torch.ones(4, 3), **kwargs)


def test_bad_rewards_shape_and_mask():
    with pytest.raises(ValueError, match=r"outcome_rewards must have shape \[B\] = \(4,\)"):
        compute_rloo_outcome_advantages(torch.zeros(5), torch.ones(4, 3), group_size=2)
    with pytest.raises(ValueError, match="response_mask must hold only 0 and 1"):
        compute_grpo_advantages(torch.zeros(4), torch.full((4, 3), 2.0), group_size=2)
