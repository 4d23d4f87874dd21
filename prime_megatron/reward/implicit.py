"""Implicit process rewards of PRIME's PRM, the PRM's losses, and its ranking accuracy.

PRIME (Cui et al. 2025, arXiv 2502.01456; the implicit PRM of Yuan et al. 2024): the PRM pi_phi is a
causal LM initialised like the policy; with a frozen reference pi_ref its token reward is

    r_phi(y_t) = beta * (log pi_phi(y_t | y_<t) - log pi_ref(y_t | y_<t))

and its sequence reward r_phi(y) = beta * sum_t (log pi_phi - log pi_ref). The PRM is
trained online on outcome labels r_o in [0, 1] with the cross-entropy loss

    L_CE = -[ r_o * log sigmoid(r_phi(y)) + (1 - r_o) * log(1 - sigmoid(r_phi(y))) ]

(soft labels allowed: code rewards are pass fractions). Both references
(PRIME repo and veRL's recipe, ``compute_ce_dpo_loss_rm``) apply beta inside the sigmoid,
as here, and compute BCE on sigmoid(z) whose log torch clamps at -100; this module uses
the logits form, identical for |z| < ~100 and finite beyond.

Shapes: B = P*K sequences (K samples per prompt adjacent), T response positions,
``response_mask`` [B, T] 0/1. Log-prob tensors are [B, T] per response token.

Left out: producing the log-probs (models/logprobs.py) and the PRM update loop
(update/). veRL's "detach" DPO variant (each sample against the detached mean of
differently-labelled group members) is not offered; ``loss_type="pairwise"`` is the plain
Bradley-Terry form over labelled pairs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prime_megatron.advantage import checks
from prime_megatron.advantage.returns import masked, place_on_last_token

GRANULARITIES = ("token", "whole")
PRM_LOSS_TYPES = ("ce", "pairwise")


def _log_ratio(prm_logprobs, ref_logprobs, response_mask):
    mask = checks.check_response_mask(response_mask)
    checks.check_token_tensor(prm_logprobs, "prm_logprobs", mask)
    checks.check_token_tensor(ref_logprobs, "ref_logprobs", mask)
    return masked(prm_logprobs - ref_logprobs, mask), mask


def _check_labels(labels: torch.Tensor, batch_size: int, like: torch.Tensor) -> torch.Tensor:
    checks.check_sequence_tensor(labels, "labels", batch_size)
    checks.check_unit_interval(labels, "labels")
    return labels.to(dtype=like.dtype)


def compute_implicit_rewards(
    prm_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta: float,
    granularity: str = "token",
) -> torch.Tensor:
    """Implicit process rewards [B, T]: beta * (prm - ref) at response tokens, 0 elsewhere.

    prm_logprobs, ref_logprobs: [B, T] log-probs of the response tokens under pi_phi and
    pi_ref; response_mask: [B, T] 0/1; beta > 0 (0.05 in the paper).
    granularity "token": one reward per token (PRIME's default). "whole": the sequence
    reward beta * sum_t (prm - ref) on the last response token, 0 on the others (an outcome-
    style reward, as the references' "whole" granularity).
    """
    checks.check_scalar(beta, "beta", low=0.0, low_open=True)
    checks.check_choice(granularity, "granularity", GRANULARITIES)
    log_ratio, mask = _log_ratio(prm_logprobs, ref_logprobs, response_mask)
    rewards = beta * log_ratio
    if granularity == "whole":
        checks.check_nonempty_rows(mask)
        rewards = place_on_last_token(rewards.sum(dim=1), mask)
    return rewards


def compute_implicit_sequence_scores(
    prm_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, response_mask: torch.Tensor, *, beta: float
) -> torch.Tensor:
    """Sequence rewards r_phi(y) = beta * sum_t (prm - ref) over response tokens, shape [B]."""
    checks.check_scalar(beta, "beta", low=0.0, low_open=True)
    log_ratio, _ = _log_ratio(prm_logprobs, ref_logprobs, response_mask)
    return beta * log_ratio.sum(dim=1)


def compute_prm_loss(
    prm_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "ce",
    group_size: int | None = None,
) -> torch.Tensor:
    """PRM training loss (0-dim), differentiable in ``prm_logprobs``.

    prm_logprobs, ref_logprobs: [B, T]; response_mask: [B, T] 0/1; labels: [B] outcome
    labels r_o in [0, 1]; beta > 0. With z_i = beta * sum_t (prm - ref):

    "ce": mean over sequences of BCE(sigmoid(z_i), r_o_i) (PRIME's L_CE, soft labels allowed).
    "pairwise": DPO/Bradley-Terry within each group of ``group_size`` (required): over the
      ordered pairs (i, j) of a group with r_o_i > r_o_j,
      sum (r_o_i - r_o_j) * -log sigmoid(z_i - z_j) / sum (r_o_i - r_o_j).
      A batch without such a pair gives 0 (still attached to the graph).
    """
    checks.check_scalar(beta, "beta", low=0.0, low_open=True)
    checks.check_choice(loss_type, "loss_type", PRM_LOSS_TYPES)
    log_ratio, mask = _log_ratio(prm_logprobs, ref_logprobs, response_mask)
    z = beta * log_ratio.sum(dim=1)
    target = _check_labels(labels, mask.shape[0], z)
    if loss_type == "ce":
        return F.binary_cross_entropy_with_logits(z, target)
    if group_size is None:
        raise ValueError('group_size (K) is required for loss_type="pairwise"')
    checks.check_group_size(group_size, mask.shape[0])
    weight, diff = _pairs(z, target, group_size)
    total = weight.sum()
    pair_loss = F.softplus(-diff)  # -log sigmoid(z_i - z_j)
    return (weight * pair_loss).sum() / total.clamp(min=torch.finfo(z.dtype).tiny)


def _pairs(scores: torch.Tensor, labels: torch.Tensor, group_size: int):
    """Per group [P, K, K]: weight (r_o_i - r_o_j) where r_o_i > r_o_j, and z_i - z_j."""
    s = scores.view(-1, group_size)
    y = labels.view(-1, group_size)
    label_gap = y.unsqueeze(2) - y.unsqueeze(1)
    return label_gap.clamp(min=0), s.unsqueeze(2) - s.unsqueeze(1)


def compute_prm_ranking_accuracy(
    prm_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    group_size: int,
    uninformative_group_value: float | None = 0.5,
) -> torch.Tensor:
    """Pairwise ranking accuracy of the PRM within groups (0-dim metric, no gradient).

    For each pair of a group with different labels, the PRM ranks it right when the sample
    with the higher label has the higher summed log-ratio (beta > 0 does not change the
    order); a tie counts 1/2. Pairs are weighted by their label gap (soft labels), a
    group's accuracy is the weighted fraction, and the metric is the mean over groups, as
    PRIME's ``compute_dpo_accuracy``. A group with all labels equal scores
    ``uninformative_group_value`` (0.5 in PRIME's code); None leaves such groups out (NaN
    when no group is informative).
    """
    with torch.no_grad():
        log_ratio, mask = _log_ratio(prm_logprobs, ref_logprobs, response_mask)
        checks.check_group_size(group_size, mask.shape[0])
        scores = log_ratio.sum(dim=1)
        target = _check_labels(labels, mask.shape[0], scores)
        weight, diff = _pairs(scores, target, group_size)
        correct = (diff > 0).to(scores.dtype) + 0.5 * (diff == 0).to(scores.dtype)
        total = weight.sum(dim=(1, 2))
        informative = total > 0
        per_group = (weight * correct).sum(dim=(1, 2)) / total.clamp(min=torch.finfo(scores.dtype).tiny)
        if uninformative_group_value is None:
            return per_group[informative].mean()
        fill = torch.full_like(per_group, float(uninformative_group_value))
        return torch.where(informative, per_group, fill).mean()
