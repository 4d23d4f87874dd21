"""Policy-update losses: PPO clipped surrogate, token aggregation, entropy and KL estimators.

PRIME (Cui et al. 2025, arXiv 2502.01456) updates the policy with the PPO clip
surrogate (Schulman et al. 2017, Eq. 7), clip 0.2, and no KL term. Per response token t
with ratio rho_t = exp(log pi_theta - log pi_old) and advantage A_t:

    l_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high))

optionally bounded for A_t < 0 by the dual clip min(l_t, -A_t * c) (Ye et al. 2020,
arXiv 1912.09729), and aggregated over the [B, T] batch by ``loss_agg``.

Shapes: logprobs, old_logprobs, advantages, response_mask are [B, T] (one value per
response token; mask 1 = real token). Metrics are detached 0-dim tensors (no host sync);
call ``.item()`` when logging.

Left out: the value loss (PRIME has no critic), vocab-parallel entropy from TP-sharded
logits (models/logprobs.py returns it per token) and loss scaling across data-parallel
ranks beyond ``global_denominator``.
"""
from __future__ import annotations

import torch

from prime_megatron.advantage import checks
from prime_megatron.advantage.returns import as_float, masked

LOSS_AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
KL_KINDS = ("k1", "k2", "k3")

# exp() of a log-ratio above ~88 overflows float32; beyond |20| the ratio is 5e8 and the
# clip has long taken over. Same bound as veRL's ppo loss.
_MAX_LOG_RATIO = 20.0


def compute_masked_aggregate(
    values: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    loss_agg: str = "token-mean",
    global_denominator: float | None = None,
) -> torch.Tensor:
    """Reduce per-token [B, T] ``values`` to a 0-dim tensor over response tokens.

    "token-mean": sum over all response tokens / their number.
    "seq-mean-token-sum": mean over sequences of each sequence's token sum.
    "seq-mean-token-mean": mean over sequences of each sequence's token mean.
    Sequences with no response token are left out of the sequence means.
    ``global_denominator``: divide by this instead of the local token (or sequence) count,
    so that micro-batch losses add up to the full-batch loss under gradient accumulation.
    """
    mask = checks.check_response_mask(response_mask)
    checks.check_token_tensor(values, "values", mask)
    checks.check_choice(loss_agg, "loss_agg", LOSS_AGGS)
    v = masked(values, mask)
    counts = mask.sum(dim=1)
    if loss_agg == "token-mean":
        total, local_count = v.sum(), counts.sum()
    else:
        per_seq = v.sum(dim=1)
        if loss_agg == "seq-mean-token-mean":
            per_seq = per_seq / counts.clamp(min=1)
        total, local_count = per_seq.sum(), (counts > 0).sum()
    if global_denominator is not None:
        checks.check_scalar(global_denominator, "global_denominator", low=0.0, low_open=True)
        return total / global_denominator
    return total / local_count.clamp(min=1)


def compute_policy_loss_per_token(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio: float = 0.2,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO clip losses [B, T] (0 at padding) and per-token bool indicators.

    clip_ratio: eps_low; clip_ratio_high: eps_high (None = clip_ratio; DAPO's "clip-higher"
    uses e.g. 0.28); clip_ratio_c: dual-clip bound c > 1 for negative advantages (None = off).
    Indicators: "clipped" where the clipped term is the active maximum, "dual_clipped"
    where the dual clip bounds the loss.
    """
    mask = checks.check_response_mask(response_mask)
    for name, x in (("logprobs", logprobs), ("old_logprobs", old_logprobs), ("advantages", advantages)):
        checks.check_token_tensor(x, name, mask)
    checks.check_scalar(clip_ratio, "clip_ratio", low=0.0, high=1.0)
    high = clip_ratio if clip_ratio_high is None else checks.check_scalar(clip_ratio_high, "clip_ratio_high", low=0.0)
    # bf16 log-probs would put the ratio on a 1/128 grid; compute the surrogate in float32.
    log_ratio = masked(as_float(logprobs) - as_float(old_logprobs), mask).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    adv = masked(as_float(advantages), mask).to(ratio.dtype)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_ratio, 1.0 + high)
    loss = torch.maximum(unclipped, clipped)
    flags = {"clipped": mask & (clipped > unclipped)}
    if clip_ratio_c is not None:
        checks.check_scalar(clip_ratio_c, "clip_ratio_c", low=1.0, low_open=True)
        bound = -adv * clip_ratio_c
        dual = mask & (adv < 0) & (bound < loss)
        loss = torch.where(dual, bound, loss)
        flags["dual_clipped"] = dual
    return masked(loss, mask), flags


def compute_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio: float = 0.2,
    clip_ratio_high: float | None = None,
    loss_agg: str = "token-mean",
    clip_ratio_c: float | None = None,
    global_denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clip policy loss (0-dim, differentiable in ``logprobs``) and metrics.

    Inputs [B, T] (see module docstring). Metrics (token means over response tokens):
    "clip_fraction" (clipped term active), "approx_kl" (mean of log pi_old - log pi_theta,
    the k1 estimate of KL(pi_old || pi_theta) that PRIME and veRL log as ppo_kl),
    "approx_kl_k3" (its low-variance k3 form), and "dual_clip_fraction" when ``clip_ratio_c``.
    """
    per_token, flags = compute_policy_loss_per_token(
        logprobs, old_logprobs, advantages, response_mask,
        clip_ratio=clip_ratio, clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c,
    )
    mask = response_mask.bool()
    loss = compute_masked_aggregate(per_token, mask, loss_agg=loss_agg, global_denominator=global_denominator)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {
            "clip_fraction": flags["clipped"].sum() / n,
            "approx_kl": masked(old_logprobs - logprobs, mask).sum() / n,
            "approx_kl_k3": compute_kl(old_logprobs, logprobs, "k3", response_mask=mask).sum() / n,
        }
        if "dual_clipped" in flags:
            metrics["dual_clip_fraction"] = flags["dual_clipped"].sum() / n
    return loss, metrics


def compute_entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: [..., V] -> [...].

    H = logsumexp(l) - sum softmax(l) * l, stable for large logits. For TP-sharded
    vocabularies use models/logprobs.py (with_entropy=True) instead.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def compute_entropy_loss(
    entropy: torch.Tensor, response_mask: torch.Tensor, *, loss_agg: str = "token-mean"
) -> torch.Tensor:
    """Mean per-token entropy [B, T] -> 0-dim over response tokens (subtract * coef to add a bonus)."""
    return compute_masked_aggregate(entropy, response_mask, loss_agg=loss_agg)


def compute_kl(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kind: str = "k1",
    *,
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token estimates [B, T] of KL(pi || pi_ref) from samples of pi (Schulman 2020).

    With d = log pi_ref - log pi at the sampled token:
    "k1": -d (unbiased, can be negative); "k2": d**2 / 2; "k3": exp(d) - 1 - d (unbiased,
    non-negative, low variance). With ``response_mask`` [B, T], padding is exactly 0 and
    values there never enter the computation.
    """
    checks.check_choice(kind, "kind", KL_KINDS)
    if response_mask is None:
        if not isinstance(logprobs, torch.Tensor) or logprobs.dim() != 2:
            raise ValueError("logprobs must be a [B, T] tensor")
        mask = torch.ones(logprobs.shape, dtype=torch.bool, device=logprobs.device)
    else:
        mask = checks.check_response_mask(response_mask)
    checks.check_token_tensor(logprobs, "logprobs", mask)
    checks.check_token_tensor(ref_logprobs, "ref_logprobs", mask)
    d = masked(ref_logprobs - logprobs, mask)
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d.square()
    return torch.expm1(d) - d
