"""PRIME's online prompt filter: keep prompts whose K samples are neither all easy nor all hard.

PRIME (Cui et al. 2025, arXiv 2502.01456; its "online prompt filtering" technique) keeps a prompt
when the mean accuracy of its K samples lies in [0.2, 0.8]: a group that is all right or
all wrong has zero RLOO outcome advantage and mostly adds noise. Groups with a response
cut at the length limit can be dropped too, since their outcome label says little.

Input: outcome_rewards [B] in [0, 1] (math 0/1, code pass fraction), truncated [B] bool
(finish_reason == "length"), B = P*K with the K samples of a prompt adjacent.

Left out: re-sampling until the batch is full and buffering the surplus (the trainer's
job); this module only decides, per prompt, keep or drop and why.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prime_megatron.advantage import checks

# Group accuracies are means of K values; 4/5 computed in float64 lands a hair off 0.8.
# Compare with this slack so that a threshold equal to an attainable accuracy is inclusive.
_THRESHOLD_SLACK = 1e-9


@dataclass(frozen=True)
class FilterResult:
    """keep: BoolTensor [P]; reasons[p]: None when kept, else why prompt p was dropped;
    accuracy: float64 [P] mean outcome reward of each prompt's K samples."""

    keep: torch.Tensor
    reasons: list[str | None]
    accuracy: torch.Tensor

    def sample_mask(self, group_size: int) -> torch.Tensor:
        """BoolTensor [P*K]: the samples of the kept prompts."""
        return self.keep.repeat_interleave(group_size)


def filter_groups(
    outcome_rewards: torch.Tensor,
    truncated: torch.Tensor,
    *,
    group_size: int,
    acc_low: float = 0.2,
    acc_high: float = 0.8,
    drop_truncated: bool = False,
) -> FilterResult:
    """Decide which of the P prompts to keep; bounds are inclusive (PRIME: [0.2, 0.8]).

    outcome_rewards: [B] in [0, 1]; truncated: [B] bool or 0/1; group_size: K >= 1.
    A prompt is dropped when its mean accuracy is below ``acc_low`` or above ``acc_high``,
    or, with ``drop_truncated``, when any of its samples was truncated. Every reason that
    applies is listed, joined by "; ".
    """
    if not isinstance(outcome_rewards, torch.Tensor) or outcome_rewards.dim() != 1:
        got = tuple(outcome_rewards.shape) if isinstance(outcome_rewards, torch.Tensor) else type(outcome_rewards)
        raise ValueError(f"outcome_rewards must be a 1-D tensor of shape [B] = [P * group_size]; got {got}")
    batch = outcome_rewards.shape[0]
    checks.check_sequence_tensor(outcome_rewards, "outcome_rewards", batch)
    checks.check_sequence_tensor(truncated, "truncated", batch)
    checks.check_unit_interval(outcome_rewards, "outcome_rewards")
    if truncated.dtype != torch.bool and not bool(((truncated == 0) | (truncated == 1)).all()):
        raise ValueError("truncated must be bool or 0/1, one flag per sequence")
    checks.check_group_size(group_size, batch, min_size=1)
    checks.check_scalar(acc_low, "acc_low", low=0.0, high=1.0)
    checks.check_scalar(acc_high, "acc_high", low=acc_low, high=1.0)

    accuracy = outcome_rewards.double().view(-1, group_size).mean(dim=1)
    n_truncated = truncated.view(-1, group_size).to(torch.int64).sum(dim=1)
    reasons = [
        _drop_reason(acc, n_trunc, group_size, acc_low, acc_high, drop_truncated)
        for acc, n_trunc in zip(accuracy.tolist(), n_truncated.tolist())
    ]
    keep = torch.tensor([r is None for r in reasons], dtype=torch.bool, device=outcome_rewards.device)
    return FilterResult(keep=keep, reasons=reasons, accuracy=accuracy)


def _drop_reason(acc, n_truncated, group_size, acc_low, acc_high, drop_truncated) -> str | None:
    reasons = []
    if acc < acc_low - _THRESHOLD_SLACK:
        reasons.append(f"accuracy {acc:.3f} < acc_low {acc_low}")
    if acc > acc_high + _THRESHOLD_SLACK:
        reasons.append(f"accuracy {acc:.3f} > acc_high {acc_high}")
    if drop_truncated and n_truncated > 0:
        reasons.append(f"{n_truncated} of {group_size} responses truncated")
    return "; ".join(reasons) if reasons else None
