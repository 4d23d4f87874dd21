"""Building blocks of the advantage estimators: masking, returns, whitening, baselines.

Shapes: B = P*K sequences (the K samples of a prompt adjacent), T response positions,
``response_mask`` [B, T] bool (True = real response token).

Masked positions are replaced with ``torch.where`` rather than multiplied by the mask,
so NaN or inf left in padding by an upstream kernel cannot leak in (0 * inf = NaN).

Left out: input validation of the public signatures (done by the callers in prime.py and
baselines.py with advantage/checks.py) and any notion of prompts other than adjacent groups.
"""
from __future__ import annotations

import torch

from prime_megatron.advantage.checks import check_response_mask

# Length of the blocks of the discounted scan for gamma < 1: a [C, C] decay matrix inside
# blocks and an [T/C, T/C] one across them replace a T-step Python loop with two matmuls
# of B*T*C and B*(T/C)**2 multiply-adds.
_SCAN_BLOCK = 64


def masked(x: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``x`` at response tokens, exactly 0 elsewhere (also where ``x`` is NaN/inf)."""
    return torch.where(response_mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32: returns and variances of 3k-token rows need it."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x


def masked_mean(x: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over response tokens (0-dim); 0 when the mask is empty."""
    count = response_mask.sum().clamp(min=1)
    return masked(x, response_mask).sum() / count


def compute_masked_whiten(values: torch.Tensor, response_mask: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Whiten [B, T] ``values`` over all response tokens of the batch; 0 at padding.

    (x - mean) / sqrt(var + eps) with the unbiased variance (n / (n - 1)) and eps = 1e-8,
    as ``masked_whiten`` in veRL's torch_functional, which both PRIME references call.
    response_mask: [B, T] bool or 0/1.
    """
    mask = check_response_mask(response_mask)
    return whiten_zero_padded(masked(values, mask), mask.to(values.dtype), eps=eps)


def whiten_zero_padded(values: torch.Tensor, float_mask: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """``compute_masked_whiten`` for values already 0 at padding and a 0/1 float mask."""
    n = float_mask.sum()
    mean = values.sum() / n.clamp(min=1)
    centered = (values - mean).mul_(float_mask)
    var = torch.linalg.vecdot(centered.view(-1), centered.view(-1)) / (n - 1).clamp(min=1)
    return centered.mul_(torch.rsqrt(var + eps))


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index [B] of the last response token of each row (rows must be non-empty)."""
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return torch.where(response_mask, positions, -1).amax(dim=1)


def place_on_last_token(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] tensor holding ``values[b]`` at the last response token of row b, 0 elsewhere."""
    out = torch.zeros(response_mask.shape, dtype=values.dtype, device=values.device)
    out.scatter_(1, last_token_index(response_mask).unsqueeze(1), values.unsqueeze(1))
    return out


def compute_leave_one_out_mean(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] mean of the other K-1 members of each sample's group: (sum_group - v_i) / (K-1)."""
    groups = values.view(-1, group_size)
    others = groups.sum(dim=1, keepdim=True) - groups
    return (others / (group_size - 1)).reshape(-1)


def compute_group_mean_std(values: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample [B] mean and unbiased std of its group of K."""
    groups = values.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True).expand_as(groups)
    std = groups.std(dim=1, keepdim=True).expand_as(groups)
    return mean.reshape(-1), std.reshape(-1)


def compute_discounted_returns(rewards: torch.Tensor, response_mask: torch.Tensor, *, gamma: float) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma**(s - t) * r_s over the positions of each row; 0 at padding.

    Rewards at padding are treated as 0 and the discount counts positions, which is what
    both PRIME references do (they scan the whole padded row). gamma == 1 is an exact
    reverse cumulative sum; gamma < 1 uses a blocked scan (see ``_SCAN_BLOCK``).
    """
    return discounted_returns_zero_padded(masked(rewards, response_mask), response_mask.to(rewards.dtype), gamma=gamma)


def discounted_returns_zero_padded(rewards: torch.Tensor, float_mask: torch.Tensor, *, gamma: float) -> torch.Tensor:
    """``compute_discounted_returns`` for rewards already 0 at padding and a 0/1 float mask."""
    if gamma == 1.0:
        out = rewards.flip(-1).cumsum_(-1).flip(-1)
    else:
        out = _blocked_discounted_scan(rewards, gamma)
    return out.mul_(float_mask)  # padding inside a row (multi-turn holes) gets 0


def _decay_matrix(n: int, base: float, dtype, device) -> torch.Tensor:
    """[n, n] matrix D[t, s] = base**(s - t) for s >= t, else 0 (powers taken in float64)."""
    idx = torch.arange(n, device=device, dtype=torch.float64)
    lag = idx.view(1, -1) - idx.view(-1, 1)
    return torch.where(lag >= 0, torch.pow(base, lag.clamp(min=0)), 0.0).to(dtype)


def _blocked_discounted_scan(r: torch.Tensor, gamma: float) -> torch.Tensor:
    """Two-level scan: exact returns inside blocks of c positions, then across blocks.

    local[b, k, t] = sum_{s >= t in block k} gamma**(s-t) r_s  (a [c, c] matmul);
    head_k = local[b, k, 0] is block k's own return at its first position, and the full
    return at block k's start is G_k = sum_{k' >= k} (gamma**c)**(k'-k) head_k' (an
    [n_blocks, n_blocks] matmul); position t of block k adds gamma**(c-t) * G_{k+1}.
    Powers that underflow to 0 stand for contributions below float resolution.
    """
    batch, length = r.shape
    c = min(_SCAN_BLOCK, length)
    n_blocks = -(-length // c)
    padded = torch.nn.functional.pad(r, (0, n_blocks * c - length)).view(batch, n_blocks, c)
    local = padded @ _decay_matrix(c, gamma, r.dtype, r.device).T
    heads = local[:, :, 0]
    block_starts = heads @ _decay_matrix(n_blocks, gamma**c, r.dtype, r.device).T
    following = torch.nn.functional.pad(block_starts[:, 1:], (0, 1))  # G_{k+1}, 0 after the last block
    offsets = torch.arange(c, device=r.device, dtype=torch.float64)
    carry_decay = torch.pow(gamma, c - offsets).to(r.dtype)
    out = local.add_(following.unsqueeze(2) * carry_decay)
    return out.reshape(batch, -1)[:, :length]
