"""One PRIME update on a collected batch: reference, PRM, advantages, policy.

The functions here glue the pure algorithm (reward/implicit.py, advantage/, update/losses.py)
to the megatron forward/backward (update/forward_backward.py). Each takes the models and
the batch explicitly and returns plain metrics, so train.py reads as the paper's
Algorithm 1. Data parallelism: every rank holds the whole batch; each dp rank trains on its
own contiguous slice of whole prompt groups and megatron DDP averages the gradients, while
log-prob passes are all-gathered so every rank sees every row.

Left out: a value model (PRIME has none), KL-to-reference penalties beyond the optional
coefficient, and asynchronous PRM updates.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from prime_megatron.advantage import (
    compute_grpo_advantages,
    compute_masked_whiten,
    compute_prime_advantages,
    compute_reinforce_pp_advantages,
    compute_rloo_outcome_advantages,
)
from prime_megatron.collect import RolloutBatch
from prime_megatron.reward.implicit import compute_prm_loss, compute_prm_ranking_accuracy
from prime_megatron.update.forward_backward import compute_logprobs, train_on_batch
from prime_megatron.update.losses import compute_kl, compute_policy_loss

PRM_LOSS_TYPES = {"ce": "ce", "dpo": "pairwise"}


def dp_rows(batch_size: int, group_size: int, *, parallel, device=None) -> torch.Tensor:
    """This dp rank's rows: a contiguous run of whole prompt groups."""
    groups = batch_size // group_size
    if groups % parallel.dp:
        raise ValueError(f"{groups} prompt groups cannot be split evenly over dp={parallel.dp}; "
                         "make data.batch_size a multiple of dp")
    per_rank = batch_size // parallel.dp
    return torch.arange(parallel.dp_rank * per_rank, (parallel.dp_rank + 1) * per_rank, device=device)


def _gather_dp(local: torch.Tensor, *, parallel) -> torch.Tensor:
    if parallel.dp == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(parallel.dp)]
    dist.all_gather(parts, local.contiguous(), group=parallel.dp_group)
    return torch.cat(parts)


def forward_logprobs(model, batch: RolloutBatch, *, parallel, micro_batch_size: int,
                     logprob_impl: str = "logits") -> torch.Tensor:
    """[B, T] log-probs of every response token under `model`, on every rank."""
    rows = dp_rows(batch.sequences.batch_size, batch.group_size, parallel=parallel,
                   device=batch.outcome_rewards.device)
    local = compute_logprobs(model, batch.sequences.select(rows), parallel=parallel,
                             micro_batch_size=micro_batch_size, logprob_impl=logprob_impl)
    width = batch.sequences.max_response_length
    local = torch.nn.functional.pad(local, (0, width - local.shape[1]))
    return _gather_dp(local, parallel=parallel) * batch.response_mask


def update_prm(prm, optimizer, batch: RolloutBatch, ref_logprobs: torch.Tensor, *, reward_cfg, update_cfg,
               parallel) -> tuple[torch.Tensor, dict[str, float]]:
    """Train the implicit PRM on outcome labels; return its [B, T] log-probs and metrics.

    prm_update "after" returns the log-probs of the very forward that trains the PRM (the
    rewards use the PRM before this step's update, one forward); "before" updates first and
    recomputes them (double forward), as the paper's ablation.
    """
    rows = dp_rows(batch.sequences.batch_size, batch.group_size, parallel=parallel,
                   device=batch.outcome_rewards.device)
    local_batch = batch.sequences.select(rows)
    ref, labels, mask = ref_logprobs[rows], batch.outcome_rewards[rows], batch.response_mask[rows]
    loss_type = PRM_LOSS_TYPES[reward_cfg.prm_loss]
    num_rows = len(rows)

    def loss_fn(logprobs, entropy, index):
        width = logprobs.shape[1]
        loss = compute_prm_loss(logprobs, ref[index, :width], mask[index, :width], labels[index],
                                beta=reward_cfg.beta, loss_type=loss_type, group_size=batch.group_size)
        # compute_prm_loss means over its rows (CE) or pairs (pairwise): weight by the micro-batch's
        # share of rows, exact for CE and a close approximation for pairwise.
        return loss * (len(index) / num_rows), {}

    # The pairwise loss compares the samples of one prompt inside a micro-batch: keep batch order
    # and cut micro-batches at group boundaries. The CE loss is per sequence: sort freely.
    pairwise = loss_type == "pairwise"
    k = batch.group_size
    mbs = max(k, update_cfg.micro_batch_size // k * k) if pairwise else update_cfg.micro_batch_size
    result = train_on_batch(prm, optimizer, local_batch, loss_fn, parallel=parallel, micro_batch_size=mbs,
                            return_logprobs=True, sort_by_length=not pairwise, logprob_impl=update_cfg.logprob_impl)
    local = result.pop("logprobs")
    metrics = {"prm/loss": result["loss"], "prm/grad_norm": result["grad_norm"]}
    if reward_cfg.prm_update == "before":
        prm_logprobs = forward_logprobs(prm, batch, parallel=parallel, micro_batch_size=update_cfg.micro_batch_size,
                                        logprob_impl=update_cfg.logprob_impl)
    else:
        width = batch.sequences.max_response_length
        local = torch.nn.functional.pad(local, (0, width - local.shape[1]))
        prm_logprobs = _gather_dp(local, parallel=parallel) * batch.response_mask
    metrics["prm/ranking_accuracy"] = float(compute_prm_ranking_accuracy(
        prm_logprobs, ref_logprobs, batch.response_mask, batch.outcome_rewards, group_size=batch.group_size))
    return prm_logprobs, metrics


def compute_step_advantages(algorithm: str, batch: RolloutBatch, process_rewards: torch.Tensor | None, *,
                            reward_cfg) -> torch.Tensor:
    mask, outcome, k = batch.response_mask, batch.outcome_rewards, batch.group_size
    if algorithm == "prime":
        return compute_prime_advantages(process_rewards, outcome, mask, group_size=k, gamma=reward_cfg.gamma,
                                        process_coef=reward_cfg.process_coef, outcome_coef=reward_cfg.outcome_coef,
                                        whiten=reward_cfg.whiten)
    if algorithm == "rloo":
        adv = compute_rloo_outcome_advantages(outcome, mask, group_size=k)
        return compute_masked_whiten(adv, mask) if reward_cfg.whiten else adv
    if algorithm == "grpo":
        return compute_grpo_advantages(outcome, mask, group_size=k)
    if algorithm == "reinforce_pp":
        return compute_reinforce_pp_advantages(outcome, mask, group_size=k)
    raise ValueError(f"unknown algorithm {algorithm!r}")


def update_policy(policy, optimizer, batch: RolloutBatch, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  *, update_cfg, parallel, ref_logprobs: torch.Tensor | None = None) -> dict[str, float]:
    """PPO clip updates: `ppo_epochs` passes over `ppo_mini_batches` mini-batches of this dp slice."""
    rows = dp_rows(batch.sequences.batch_size, batch.group_size, parallel=parallel,
                   device=batch.outcome_rewards.device)
    mask = batch.response_mask
    totals: dict[str, list[float]] = {}
    for _ in range(update_cfg.ppo_epochs):
        for mini in rows.chunk(update_cfg.ppo_mini_batches):
            loss_fn = _ppo_loss_fn(mini, old_logprobs, advantages, mask, ref_logprobs, update_cfg)
            result = train_on_batch(policy, optimizer, batch.sequences.select(mini), loss_fn, parallel=parallel,
                                    micro_batch_size=update_cfg.micro_batch_size, with_entropy=True,
                                    logprob_impl=update_cfg.logprob_impl)
            for key, value in result.items():
                totals.setdefault(key if "/" in key else f"policy/{key}", []).append(float(value))
    return {k: sum(v) / len(v) for k, v in totals.items()}


def _ppo_loss_fn(mini, old_logprobs, advantages, mask, ref_logprobs, update_cfg):
    """PPO loss over one mini-batch, split into micro-batches that sum to the mini-batch loss."""
    mini_mask = mask[mini]
    denominator = float(mini_mask.sum()) if update_cfg.loss_agg == "token-mean" else float((mini_mask.sum(1) > 0).sum())
    num_tokens = float(mini_mask.sum())

    def loss_fn(logprobs, entropy, index):
        rows, width = mini[index], logprobs.shape[1]
        m = mask[rows, :width]
        loss, stats = compute_policy_loss(logprobs, old_logprobs[rows, :width], advantages[rows, :width], m,
                                          clip_ratio=update_cfg.clip_ratio, clip_ratio_high=update_cfg.clip_ratio_high,
                                          loss_agg=update_cfg.loss_agg, global_denominator=denominator)
        metrics = {f"policy/{k}": v.detach() for k, v in stats.items()}
        if entropy is not None:
            metrics["policy/entropy"] = ((entropy * m).sum() / m.sum().clamp(min=1)).detach()
            if update_cfg.entropy_coef:
                loss = loss - update_cfg.entropy_coef * (entropy * m).sum() / num_tokens
        if update_cfg.kl_coef and ref_logprobs is not None:
            kl = compute_kl(logprobs, ref_logprobs[rows, :width], "k3", response_mask=m)
            loss = loss + update_cfg.kl_coef * kl.sum() / num_tokens
        return loss, metrics
    return loss_fn
