"""PRIME advantages: RLOO on implicit process rewards plus RLOO on outcome rewards (Eq. 5).

PRIME (Cui et al. 2025, arXiv 2502.01456), Eq. 5, for sample i of K and response token t:

    A_i^t = sum_{s=t}^{|y_i|} gamma^(s-t) * [ r_phi(y_i^s) - 1/(K-1) sum_{j != i} r_phi(y^j) / |y^j| ]
            + r_o(y_i) - 1/(K-1) sum_{j != i} r_o(y^j)

where r_phi(y_i^s) = beta * (log pi_phi - log pi_ref) is the implicit process reward
(reward/implicit.py) and r_phi(y^j) / |y^j| is the per-sample mean of sample j's token rewards.

The two reference implementations, the PRIME repository's ``compute_rloo_returns``
(in its veRL fork's trainer/ppo/core_algos.py) and veRL's PRIME recipe
(``recipe/prime/prime_core_algos.compute_rloo_advantage_return`` with the token scores of
``prime_dp_rm``), differ from the equation and from each other. Each difference is a
keyword of ``compute_prime_advantages``:

* ``process_loo`` -- the K/(K-1) scaling. Both references compute
  ``r_t * K/(K-1) - sum_j mean_j / (K-1)``; expanding, that is the Eq. 5 term plus
  ``(r_t - mean_i) / (K-1)``: the sample's own within-row deviation is scaled up. The two
  agree when a row has one rewarded token (the outcome reward). Default ``"paper"`` (Eq. 5);
  ``"scaled"`` reproduces both references.
* ``last_token_process_reward`` -- PRIME's ``compute_rloo_returns`` gives every response
  token, the last included, its process reward (its reward mask is the response mask).
  veRL's ``prime_dp_rm`` (granularity "token") zeroes the score of the last token, which
  still counts in the per-sample mean. Default True (PRIME repo and the sum to |y_i| of Eq. 5).
* where beta enters -- in the token rewards themselves (reward/implicit.py), as in both
  references' reward-model forward; this function takes rewards that already include beta.
* ``process_coef`` / ``outcome_coef`` -- veRL multiplies each source's RLOO rewards by
  ``reward_dpo_coef`` / ``reward_gt_coef`` (5 and 5 in its PRIME example) before the sum;
  PRIME's ``compute_rloo_returns`` itself sums the sources unweighted. Defaults 1.0 and 1.0 (Eq. 5,
  PRIME repo). The coefficients multiply before the return, which is linear, so where they
  enter in the reverse scan does not matter; with ``whiten=True`` a common factor (5, 5)
  cancels exactly and only the ratio of the two coefficients changes the result.
* ``gamma`` / ``outcome_gamma`` -- PRIME's code discounts each source with its own gamma
  (``reward_model_gamma``, ``verifier_gamma``); veRL uses an undiscounted reverse cumsum.
  Eq. 5 discounts only the process term and adds the outcome term undiscounted, which is
  ``outcome_gamma=1.0``. Defaults gamma = 1.0 (veRL and the paper's runs) and
  ``outcome_gamma=None`` meaning "same as gamma".
* ``whiten`` -- both references whiten the summed returns over all response tokens of the
  batch (unbiased variance, eps 1e-8). Default True.

Left out: multi-turn masks with holes are accepted, but the discount counts positions,
not tokens (as both references do), and no per-turn granularity is offered.
"""
from __future__ import annotations

import torch

from prime_megatron.advantage import checks
from prime_megatron.advantage.returns import (
    as_float,
    compute_leave_one_out_mean,
    discounted_returns_zero_padded,
    last_token_index,
    masked,
    whiten_zero_padded,
)

PROCESS_LOO_FORMS = ("paper", "scaled")


def compute_process_rloo_rewards(
    process_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    group_size: int,
    process_loo: str = "paper",
    last_token_process_reward: bool = True,
) -> torch.Tensor:
    """Leave-one-out process rewards [B, T] before discounting (inner bracket of Eq. 5).

    process_rewards: [B, T] implicit rewards (beta already applied); response_mask: [B, T].
    "paper":  r_i^t - 1/(K-1) * sum_{j != i} mean_j
    "scaled": r_i^t * K/(K-1) - 1/(K-1) * sum_j mean_j   (both reference implementations)
    mean_j is the mean of sample j's token rewards over its response tokens.
    """
    mask = checks.check_response_mask(response_mask)
    checks.check_token_tensor(process_rewards, "process_rewards", mask)
    checks.check_group_size(group_size, mask.shape[0])
    checks.check_choice(process_loo, "process_loo", PROCESS_LOO_FORMS)
    return _process_rloo(as_float(process_rewards), mask, group_size, process_loo, last_token_process_reward)


def _process_rloo(rewards, mask, group_size, process_loo, last_token_process_reward):
    counts = checks.check_nonempty_rows(mask)
    r = masked(rewards, mask)
    if not last_token_process_reward:
        r.scatter_(1, last_token_index(mask).unsqueeze(1), 0.0)
    sample_mean = r.sum(dim=1) / counts
    k = group_size
    if process_loo == "paper":
        baseline = compute_leave_one_out_mean(sample_mean, k)
    else:
        r.mul_(k / (k - 1))
        baseline = sample_mean.view(-1, k).sum(dim=1, keepdim=True).expand(-1, k).reshape(-1) / (k - 1)
    # r is 0 at padding; subtracting the baseline only at response tokens keeps it so.
    return r.sub_(baseline.unsqueeze(1) * mask)


def compute_prime_advantages(
    process_rewards: torch.Tensor,
    outcome_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    group_size: int,
    gamma: float = 1.0,
    process_coef: float = 1.0,
    outcome_coef: float = 1.0,
    whiten: bool = True,
    outcome_gamma: float | None = None,
    process_loo: str = "paper",
    last_token_process_reward: bool = True,
) -> torch.Tensor:
    """PRIME advantages [B, T] (Eq. 5); 0 at padding. See the module docstring for the keywords.

    process_rewards: [B, T] implicit process rewards beta * (log pi_phi - log pi_ref).
    outcome_rewards: [B] verifier rewards r_o (1/0 for math, pass fraction for code).
    response_mask: [B, T] 0/1. group_size: K, the samples of each prompt are adjacent.

    Steps: RLOO on the process rewards (per-sample mean as the leave-one-out baseline,
    subtracted per token); RLOO on the outcome rewards, placed on the last response token;
    each source scaled by its coefficient and turned into its own discounted return; the
    sum whitened over all response tokens of the batch when ``whiten``.
    Returns float32 for half-precision inputs; computed under no_grad (a constant of the loss).
    """
    mask = checks.check_response_mask(response_mask)
    checks.check_token_tensor(process_rewards, "process_rewards", mask)
    checks.check_sequence_tensor(outcome_rewards, "outcome_rewards", mask.shape[0])
    checks.check_group_size(group_size, mask.shape[0])
    checks.check_choice(process_loo, "process_loo", PROCESS_LOO_FORMS)
    checks.check_scalar(gamma, "gamma", low=0.0, high=1.0)
    if outcome_gamma is None:
        outcome_gamma = gamma
    checks.check_scalar(outcome_gamma, "outcome_gamma", low=0.0, high=1.0)
    checks.check_scalar(process_coef, "process_coef", low=-float("inf"))
    checks.check_scalar(outcome_coef, "outcome_coef", low=-float("inf"))

    with torch.no_grad():  # advantages are constants of the policy loss
        process = _process_rloo(as_float(process_rewards), mask, group_size, process_loo, last_token_process_reward)
        outcome = as_float(outcome_rewards).to(process.dtype)
        outcome_rloo = outcome - compute_leave_one_out_mean(outcome, group_size)
        float_mask = mask.to(process.dtype)
        last = last_token_index(mask).unsqueeze(1)
        rewards = process.mul_(process_coef)
        if outcome_gamma == gamma:
            # One scan for both sources: the discounted return is linear in the rewards.
            rewards.scatter_add_(1, last, (outcome_coef * outcome_rloo).unsqueeze(1))
            returns = discounted_returns_zero_padded(rewards, float_mask, gamma=gamma)
        else:
            outcome_tokens = torch.zeros_like(rewards).scatter_(1, last, (outcome_coef * outcome_rloo).unsqueeze(1))
            returns = discounted_returns_zero_padded(rewards, float_mask, gamma=gamma)
            returns += discounted_returns_zero_padded(outcome_tokens, float_mask, gamma=outcome_gamma)
        return whiten_zero_padded(returns, float_mask) if whiten else returns
