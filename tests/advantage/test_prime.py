"""PRIME advantages (Eq. 5), returns and whitening: hand-worked numbers, loop reference,
padding invariance and input errors."""
import math

import pytest
import torch

from prime_megatron.advantage import (
    compute_discounted_returns,
    compute_masked_whiten,
    compute_prime_advantages,
    compute_process_rloo_rewards,
)
from tests.advantage.inputs import random_mask, with_garbage
from tests.advantage.loop_reference import loop_discounted_returns, loop_prime_advantages

# Two samples of one prompt (K = 2). Sample 0 has 3 response tokens with process rewards
# [1, 2, 3] (mean 2); sample 1 has 1 token with reward 4 (mean 4). Padding holds 9s,
# which must be ignored. Outcomes: sample 0 right (1), sample 1 wrong (0).
PROC = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]], dtype=torch.float64)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
OUTCOME = torch.tensor([1.0, 0.0], dtype=torch.float64)


def test_hand_worked_paper_form_gamma_1():
    # Process LOO (Eq. 5): sample 0 tokens minus the other's mean 4 -> [-3, -2, -1];
    #                      sample 1 token minus the other's mean 2 -> [2].
    # Outcome LOO: 1 - 0 = 1 on sample 0's last token (t=2); 0 - 1 = -1 on sample 1's (t=0).
    # gamma = 1 returns: sample 0 process reverse cumsum [-6, -3, -1] + outcome 1 -> [-5, -2, 0];
    #                    sample 1: 2 + (-1) = 1.
    adv = compute_prime_advantages(PROC, OUTCOME, MASK, group_size=2, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[-5.0, -2.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64))


def test_hand_worked_gamma_half():
    # Process returns of [-3, -2, -1] with gamma 0.5: G2 = -1, G1 = -2 + 0.5*(-1) = -2.5,
    # G0 = -3 + 0.5*(-2.5) = -4.25. Outcome 1 at t=2 discounted: [0.25, 0.5, 1].
    # Sum: [-4.0, -2.0, 0.0]. Sample 1 has one token: 2 - 1 = 1.
    adv = compute_prime_advantages(PROC, OUTCOME, MASK, group_size=2, gamma=0.5, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[-4.0, -2.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    # Eq. 5 proper leaves the outcome undiscounted: outcome_gamma=1 -> [-4.25+1, -2.5+1, -1+1].
    adv = compute_prime_advantages(PROC, OUTCOME, MASK, group_size=2, gamma=0.5, outcome_gamma=1.0, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[-3.25, -1.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64))


def test_hand_worked_reference_forms():
    # "scaled" (PRIME repo / veRL): r * K/(K-1) - sum_j mean_j / (K-1) = 2r - 6:
    # sample 0 -> [-4, -2, 0], sample 1 -> 8 - 6 = 2.
    scaled = compute_process_rloo_rewards(PROC, MASK, group_size=2, process_loo="scaled")
    torch.testing.assert_close(scaled, torch.tensor([[-4.0, -2.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64))
    # No process reward on the last token (veRL): rows become [1, 2, 0] (mean 1) and [0]
    # (mean 0), the zeroed token still counted. Paper LOO: [1-0, 2-0, 0-0] and [0-1].
    no_last = compute_process_rloo_rewards(PROC, MASK, group_size=2, last_token_process_reward=False)
    torch.testing.assert_close(no_last, torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64))


def test_reference_and_paper_forms_agree_on_one_token_rows():
    # With one rewarded token per row, r_t equals the row mean, so the extra term
    # (r_t - mean_i) / (K-1) of the "scaled" form vanishes (the outcome-reward case).
    g = torch.Generator().manual_seed(5)
    rewards = torch.randn(8, 5, generator=g, dtype=torch.float64)
    mask = torch.zeros(8, 5, dtype=torch.float64)
    mask[torch.arange(8), torch.randint(0, 5, (8,), generator=g)] = 1.0
    paper = compute_process_rloo_rewards(rewards, mask, group_size=4)
    scaled = compute_process_rloo_rewards(rewards, mask, group_size=4, process_loo="scaled")
    # float64: the two forms differ only by rounding (~1e-16).
    torch.testing.assert_close(paper, scaled, rtol=1e-12, atol=1e-12)


def test_hand_worked_whiten():
    # Values [1, 2, 3] at tokens, padding ignored: mean 2, unbiased var (1+0+1)/2 = 1,
    # so [-1, 0, 1]; eps = 1e-8 moves the scale by 5e-9, below the 1e-7 tolerance.
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    out = compute_masked_whiten(values, mask)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-7)
    # A 0/1 float mask (what SequenceBatch.response_mask() gives) means the same.
    torch.testing.assert_close(compute_masked_whiten(values, mask.double()), out, rtol=0, atol=0)


def test_whitening_cancels_common_coefficient_scale():
    # veRL's coefficients (5, 5) multiply both sources; whitening divides the scale out,
    # so they equal (1, 1) up to eps/var (~1e-8 relative, far below 1e-6).
    g = torch.Generator().manual_seed(0)
    mask = random_mask(8, 12, g)
    proc = torch.randn(8, 12, generator=g, dtype=torch.float64)
    out = torch.randint(0, 2, (8,), generator=g).double()
    five = compute_prime_advantages(proc, out, mask, group_size=4, process_coef=5.0, outcome_coef=5.0)
    one = compute_prime_advantages(proc, out, mask, group_size=4)
    torch.testing.assert_close(five, one, rtol=1e-6, atol=1e-6)


OPTION_SETS = [
    {},
    {"whiten": False},
    {"gamma": 0.9, "process_coef": 5.0, "outcome_coef": 5.0},
    {"gamma": 0.95, "outcome_gamma": 1.0, "process_loo": "scaled", "whiten": False},
    {"last_token_process_reward": False, "process_coef": 0.3, "outcome_coef": 2.0, "gamma": 0.0},
]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_matches_loop_reference(options):
    g = torch.Generator().manual_seed(1)
    batch, length, k = 12, 150, 4  # T=150 is not a multiple of the 64-token scan block
    mask = random_mask(batch, length, g)
    proc = torch.randn(batch, length, generator=g, dtype=torch.float64) * 0.05
    outcome = torch.rand(batch, generator=g, dtype=torch.float64)
    got = compute_prime_advantages(proc, outcome, mask, group_size=k, **options)
    want = loop_prime_advantages(proc, outcome, mask, group_size=k, **options)
    # float64 throughout; the only differences are summation orders (~1e-15 relative).
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gamma, length", [(0.0, 200), (0.5, 200), (0.99, 200), (1.0, 200), (0.9, 3000), (0.999, 3000)])
def test_discounted_returns_match_loop(gamma, length):
    # 3000 positions = 47 scan blocks: the cross-block powers (0.9**64)**46 underflow to 0.
    g = torch.Generator().manual_seed(2)
    mask = random_mask(5, length, g)
    rewards = torch.randn(5, length, generator=g, dtype=torch.float64)
    got = compute_discounted_returns(rewards, mask.bool(), gamma=gamma)
    want = torch.tensor(loop_discounted_returns(rewards.tolist(), mask.bool().tolist(), gamma), dtype=torch.float64)
    # float64; the blocked scan sums in a different order than the recursion (~1e-13).
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options", OPTION_SETS)
def test_padding_values_do_not_change_result(options):
    g = torch.Generator().manual_seed(3)
    mask = random_mask(8, 40, g)
    proc = torch.randn(8, 40, generator=g, dtype=torch.float64)
    outcome = torch.randint(0, 2, (8,), generator=g).double()
    clean = compute_prime_advantages(proc, outcome, mask, group_size=4, **options)
    dirty = compute_prime_advantages(with_garbage(proc, mask, g), outcome, mask.bool(), group_size=4, **options)
    assert torch.equal(clean, dirty)
    assert bool((clean[mask == 0] == 0).all())


def test_half_precision_input_gives_float32():
    g = torch.Generator().manual_seed(4)
    mask = random_mask(4, 16, g)
    proc = torch.randn(4, 16, generator=g).bfloat16()
    adv = compute_prime_advantages(proc, torch.tensor([1.0, 0.0, 1.0, 1.0]), mask, group_size=2)
    assert adv.dtype == torch.float32
    want = loop_prime_advantages(proc.double(), torch.tensor([1.0, 0.0, 1.0, 1.0]), mask, group_size=2)
    # bf16 inputs are exact in float32; the float32 pipeline keeps ~1e-6 relative error.
    torch.testing.assert_close(adv.double(), want, rtol=1e-5, atol=1e-5)


def _call(**over):
    args = {
        "process_rewards": torch.zeros(4, 3),
        "outcome_rewards": torch.zeros(4),
        "response_mask": torch.ones(4, 3),
        "group_size": 2,
    }
    args.update(over)
    return compute_prime_advantages(
        args.pop("process_rewards"), args.pop("outcome_rewards"), args.pop("response_mask"), **args
    )


@pytest.mark.parametrize(
    "over, message",
    [
        ({"group_size": 3}, "not divisible by group_size"),
        ({"group_size": 1}, "group_size must be an int >= 2"),
        ({"process_rewards": torch.zeros(4, 5)}, r"process_rewards must have shape \[B, T\] = \(4, 3\)"),
        ({"outcome_rewards": torch.zeros(4, 1)}, r"outcome_rewards must have shape \[B\] = \(4,\)"),
        ({"response_mask": torch.full((4, 3), 0.5)}, "response_mask must hold only 0 and 1"),
        ({"response_mask": torch.ones(4)}, r"response_mask must be a 2-D tensor of shape \[B, T\]"),
        ({"response_mask": torch.tensor([[1.0, 1, 1]] * 3 + [[0.0, 0, 0]])}, "response_mask row 3 has no response token"),
        ({"gamma": 1.5}, r"gamma must lie in \[0.0, 1.0\]"),
        ({"process_loo": "other"}, "process_loo must be one of"),
        ({"outcome_rewards": torch.tensor([0.0, float("nan"), 0.0, 0.0])}, "outcome_rewards must be finite"),
    ],
)
def test_bad_input_names_the_argument(over, message):
    with pytest.raises(ValueError, match=message):
        _call(**over)


def test_group_members_with_equal_rewards_get_zero_outcome_part():
    # All four samples right: outcome LOO is 1 - 1 = 0 for each, so with zero process
    # rewards every advantage is 0 (whitening of all zeros stays 0, no NaN).
    adv = compute_prime_advantages(torch.zeros(4, 3), torch.ones(4), torch.ones(4, 3), group_size=4)
    assert torch.equal(adv, torch.zeros(4, 3))
    assert not math.isnan(adv.sum().item())
