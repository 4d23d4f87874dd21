"""Advantage estimators: PRIME's RLOO on process + outcome rewards, and outcome-only baselines.

Pure tensor functions (torch only); see prime.py for Eq. 5 and how it differs from the two
reference implementations, baselines.py for RLOO / GRPO / REINFORCE++.
"""
from prime_megatron.advantage.baselines import (
    compute_grpo_advantages,
    compute_reinforce_pp_advantages,
    compute_rloo_outcome_advantages,
)
from prime_megatron.advantage.prime import compute_prime_advantages, compute_process_rloo_rewards
from prime_megatron.advantage.returns import compute_discounted_returns, compute_masked_whiten

__all__ = [
    "compute_discounted_returns",
    "compute_grpo_advantages",
    "compute_masked_whiten",
    "compute_prime_advantages",
    "compute_process_rloo_rewards",
    "compute_reinforce_pp_advantages",
    "compute_rloo_outcome_advantages",
]
