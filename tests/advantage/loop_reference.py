"""Slow, obviously-correct loop versions of the advantage estimators, on Python floats.

Written straight from the formulas (PRIME Eq. 5, RLOO, GRPO, REINFORCE++), one sequence
and one token at a time, sharing no code with prime_megatron.advantage. The tests compare
the vectorised functions against them; benchmarks/advantage.py times them.
Inputs are torch tensors; outputs are torch float64 tensors of the same [B, T] shape.
"""
from __future__ import annotations

import math

import torch


def _rows(process_rewards, response_mask):
    mask = response_mask.bool().tolist()
    rewards = process_rewards.double().tolist() if process_rewards is not None else None
    return mask, rewards


def loop_discounted_returns(rewards, mask, gamma):
    """rewards, mask: lists of lists. G_t = r_t + gamma * G_{t+1}, padding counted as reward 0."""
    out = []
    for row_r, row_m in zip(rewards, mask):
        g, row = 0.0, [0.0] * len(row_r)
        for t in reversed(range(len(row_r))):
            g = (row_r[t] if row_m[t] else 0.0) + gamma * g
            row[t] = g if row_m[t] else 0.0
        out.append(row)
    return out


def loop_whiten(values, mask, eps=1e-8):
    picked = [v for row_v, row_m in zip(values, mask) for v, m in zip(row_v, row_m) if m]
    mean = sum(picked) / len(picked)
    var = sum((v - mean) ** 2 for v in picked) / max(len(picked) - 1, 1)
    scale = 1.0 / math.sqrt(var + eps)
    return [[(v - mean) * scale if m else 0.0 for v, m in zip(row_v, row_m)] for row_v, row_m in zip(values, mask)]


def _last(row_m):
    return max(t for t, m in enumerate(row_m) if m)


def loop_prime_advantages(
    process_rewards, outcome_rewards, response_mask, *, group_size, gamma=1.0, process_coef=1.0,
    outcome_coef=1.0, whiten=True, outcome_gamma=None, process_loo="paper", last_token_process_reward=True,
):
    mask, proc = _rows(process_rewards, response_mask)
    outcome = outcome_rewards.double().tolist()
    k = group_size
    proc = [[r if m else 0.0 for r, m in zip(row_r, row_m)] for row_r, row_m in zip(proc, mask)]
    if not last_token_process_reward:
        for row_r, row_m in zip(proc, mask):
            row_r[_last(row_m)] = 0.0
    means = [sum(row_r) / sum(row_m) for row_r, row_m in zip(proc, mask)]
    proc_loo, out_loo = [], []
    for i in range(len(mask)):
        g0 = (i // k) * k
        others = [j for j in range(g0, g0 + k) if j != i]
        if process_loo == "paper":
            base = sum(means[j] for j in others) / (k - 1)
            proc_loo.append([(r - base) if m else 0.0 for r, m in zip(proc[i], mask[i])])
        else:
            base = sum(means[j] for j in range(g0, g0 + k)) / (k - 1)
            proc_loo.append([(r * k / (k - 1) - base) if m else 0.0 for r, m in zip(proc[i], mask[i])])
        row = [0.0] * len(mask[i])
        row[_last(mask[i])] = outcome[i] - sum(outcome[j] for j in others) / (k - 1)
        out_loo.append(row)
    proc_ret = loop_discounted_returns([[process_coef * r for r in row] for row in proc_loo], mask, gamma)
    og = gamma if outcome_gamma is None else outcome_gamma
    out_ret = loop_discounted_returns([[outcome_coef * r for r in row] for row in out_loo], mask, og)
    total = [[a + b for a, b in zip(ra, rb)] for ra, rb in zip(proc_ret, out_ret)]
    return torch.tensor(loop_whiten(total, mask) if whiten else total, dtype=torch.float64)


def loop_rloo_outcome(outcome_rewards, response_mask, *, group_size):
    mask = response_mask.bool().tolist()
    r = outcome_rewards.double().tolist()
    k = group_size
    out = []
    for i, row_m in enumerate(mask):
        g0 = (i // k) * k
        base = sum(r[j] for j in range(g0, g0 + k) if j != i) / (k - 1)
        out.append([(r[i] - base) if m else 0.0 for m in row_m])
    return torch.tensor(out, dtype=torch.float64)


def loop_grpo(outcome_rewards, response_mask, *, group_size, eps=1e-6, normalize_by_std=True):
    mask = response_mask.bool().tolist()
    r = outcome_rewards.double().tolist()
    k = group_size
    out = []
    for i, row_m in enumerate(mask):
        g = r[(i // k) * k:(i // k) * k + k]
        mean = sum(g) / k
        std = math.sqrt(sum((x - mean) ** 2 for x in g) / (k - 1))
        a = (r[i] - mean) / (std + eps) if normalize_by_std else r[i] - mean
        out.append([a if m else 0.0 for m in row_m])
    return torch.tensor(out, dtype=torch.float64)


def loop_reinforce_pp(outcome_rewards, response_mask, *, gamma=1.0, token_kl=None, kl_coef=0.0, group_size=None):
    mask = response_mask.bool().tolist()
    r = outcome_rewards.double().tolist()
    if group_size is not None:
        k = group_size
        r = [x - sum(r[(i // k) * k:(i // k) * k + k]) / k for i, x in enumerate(r)]
    kl = token_kl.double().tolist() if token_kl is not None else None
    rewards = []
    for i, row_m in enumerate(mask):
        row = [(-kl_coef * kl[i][t] if (kl is not None and m) else 0.0) for t, m in enumerate(row_m)]
        row[_last(row_m)] += r[i]
        rewards.append(row)
    return torch.tensor(loop_whiten(loop_discounted_returns(rewards, mask, gamma), mask), dtype=torch.float64)
