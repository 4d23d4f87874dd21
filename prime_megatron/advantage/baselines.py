"""Outcome-only advantage estimators for ablations against PRIME: RLOO, GRPO, REINFORCE++.

All take one outcome reward per sequence, outcome_rewards [B] with B = P*K and the K
samples of each prompt adjacent, and return [B, T] advantages that are 0 at padding.

* RLOO (Ahmadian et al. 2024, "Back to Basics"): r_i - mean_{j != i} r_j, the outcome half
  of PRIME's Eq. 5 and the "RLOO with outcome verifier only" baseline of the PRIME paper.
* GRPO (Shao et al. 2024, DeepSeekMath Sec. 4.1.2): (r_i - mean_group) / (std_group + eps),
  unbiased std and eps 1e-6 as veRL's ``compute_grpo_outcome_advantage``.
* REINFORCE++ (Hu 2025, arXiv 2501.03262): outcome reward on the last token minus an
  optional per-token KL penalty, discounted return, whitened over the whole batch.

Left out: value-function baselines (GAE) and the dual-group variants of later papers.
"""
from __future__ import annotations

import torch

from prime_megatron.advantage import checks
from prime_megatron.advantage.returns import (
    as_float,
    compute_discounted_returns,
    compute_group_mean_std,
    compute_leave_one_out_mean,
    compute_masked_whiten,
    masked,
    place_on_last_token,
)


def _broadcast(per_sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked(per_sequence.unsqueeze(1).expand(mask.shape), mask)


def compute_rloo_outcome_advantages(
    outcome_rewards: torch.Tensor, response_mask: torch.Tensor, *, group_size: int
) -> torch.Tensor:
    """Outcome RLOO [B, T]: A_i = r_i - 1/(K-1) sum_{j != i} r_j on every response token.

    outcome_rewards: [B]; response_mask: [B, T] 0/1; group_size: K >= 2.
    Not whitened (PRIME's Eq. 5 outcome term on its own, undiscounted).
    """
    mask = checks.check_response_mask(response_mask)
    checks.check_sequence_tensor(outcome_rewards, "outcome_rewards", mask.shape[0])
    checks.check_group_size(group_size, mask.shape[0])
    r = as_float(outcome_rewards)
    return _broadcast(r - compute_leave_one_out_mean(r, group_size), mask)


def compute_grpo_advantages(
    outcome_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    group_size: int,
    normalize_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO [B, T]: (r_i - mean_group) / (std_group + eps) on every response token.

    outcome_rewards: [B]; response_mask: [B, T] 0/1; group_size: K >= 2 (the unbiased
    std needs two samples). ``normalize_by_std=False`` gives Dr. GRPO's mean-only version.
    """
    mask = checks.check_response_mask(response_mask)
    checks.check_sequence_tensor(outcome_rewards, "outcome_rewards", mask.shape[0])
    checks.check_group_size(group_size, mask.shape[0])
    checks.check_scalar(eps, "eps", low=0.0, low_open=True)
    r = as_float(outcome_rewards)
    mean, std = compute_group_mean_std(r, group_size)
    adv = r - mean
    if normalize_by_std:
        adv = adv / (std + eps)
    return _broadcast(adv, mask)


def compute_reinforce_pp_advantages(
    outcome_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    token_kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    group_size: int | None = None,
) -> torch.Tensor:
    """REINFORCE++ [B, T]: whitened discounted return of r_o (last token) - kl_coef * KL_t.

    outcome_rewards: [B]; response_mask: [B, T] 0/1; token_kl: optional [B, T] per-token KL
    estimate to the reference policy (e.g. ``compute_kl(..., kind="k1")``), required when
    kl_coef != 0. ``group_size``: when given, subtract each prompt's mean outcome first
    (the "REINFORCE++-baseline" variant); None keeps plain REINFORCE++ (batch whitening only).
    """
    mask = checks.check_response_mask(response_mask)
    checks.check_sequence_tensor(outcome_rewards, "outcome_rewards", mask.shape[0])
    checks.check_scalar(gamma, "gamma", low=0.0, high=1.0)
    checks.check_scalar(kl_coef, "kl_coef", low=0.0)
    checks.check_nonempty_rows(mask)
    r = as_float(outcome_rewards)
    if group_size is not None:
        checks.check_group_size(group_size, mask.shape[0])
        r = r - compute_group_mean_std(r, group_size)[0]
    token_rewards = place_on_last_token(r, mask)
    if kl_coef != 0.0:
        if token_kl is None:
            raise ValueError("token_kl [B, T] is required when kl_coef != 0")
        checks.check_token_tensor(token_kl, "token_kl", mask)
        token_rewards = token_rewards - kl_coef * masked(as_float(token_kl), mask)
    returns = compute_discounted_returns(token_rewards, mask, gamma=gamma)
    return compute_masked_whiten(returns, mask)
