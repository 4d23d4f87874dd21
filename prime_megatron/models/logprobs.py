"""Per-token log-probs (and entropy) from vocab-sharded logits, in bounded memory.

Each tensor-parallel rank holds logits for a contiguous slice of the (padded) vocabulary,
the layout megatron's ColumnParallelLinear output layer produces with parallel_output=True.
For token n with target y_n and logits x over the full vocabulary V:

    logprob_n = x[y_n] - logsumexp(x)
    entropy_n = logsumexp(x) - sum_v p_v x_v,      p = softmax(x)

are assembled from per-shard partial results with two all-reduces per chunk (the max, then
one packed sum of [sum exp, target logit, sum exp * x]); the full vocabulary is never
gathered. Tokens are processed `chunk_size` at a time, in float32: the forward keeps only
three floats per token for the backward, which recomputes softmax chunk by chunk and
writes straight into the logits' gradient. Peak memory beyond the logits and their gradient
is therefore O(chunk_size * V/tp), independent of the number of tokens. The input logits
are never modified (megatron's vocab_parallel_cross_entropy overwrites them in place).

Gradients (per token, g = upstream grads):
    d logprob / d x_v = [v == y] - p_v
    d entropy / d x_v = -p_v (x_v - sum_u p_u x_u)

Vocabulary rows >= `vocab_size` (padding added so the vocab divides by tp) are excluded
from the softmax. `temperature` divides the logits first, as the sampler does.

Left out: a fused GPU kernel (the TE / Triton path is a separate module); label smoothing.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

# Finite stand-in for -inf on padded vocabulary rows: exp() underflows to 0 and, unlike
# -inf, 0 * _MASKED stays 0 instead of nan in the sum p * x.
_MASKED = -1e30


def _tp_size_rank(tp_group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(tp_group), dist.get_rank(tp_group)


def _chunk_logits(logits, start, stop, vocab_start, vocab_size, temperature):
    """float32 copy of rows [start, stop) with padded vocab columns masked out."""
    # copy=True: the chunk is modified in place below and must never alias the caller's logits.
    x = logits[start:stop].to(torch.float32, copy=True)
    if temperature != 1.0:
        x.div_(temperature)
    local = logits.shape[-1]
    if vocab_size is not None and vocab_start + local > vocab_size:
        x[:, max(vocab_size - vocab_start, 0):] = _MASKED
    return x


def _chunk_stats(x, targets, vocab_start, tp_group, tp, with_entropy):
    """Global (max, log-normaliser, target logit, expected logit) for one chunk of tokens."""
    m = x.max(dim=-1).values
    if tp > 1:
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
    e = (x - m.unsqueeze(-1)).exp_()
    local_t = targets - vocab_start
    in_shard = (local_t >= 0) & (local_t < x.shape[-1])
    t_logit = torch.where(in_shard, x.gather(-1, local_t.clamp(0, x.shape[-1] - 1).unsqueeze(-1)).squeeze(-1), 0.0)
    parts = [e.sum(-1), t_logit]
    if with_entropy:
        # sum_v e_v x_v as a batched dot product: no [chunk, V/tp] temporary.
        parts.append(torch.bmm(e.unsqueeze(1), x.unsqueeze(2)).view(-1))
    packed = torch.stack(parts)
    if tp > 1:
        dist.all_reduce(packed, group=tp_group)
    sum_exp = packed[0]
    log_z = m + torch.log(sum_exp)
    mean_x = packed[2] / sum_exp if with_entropy else None
    return log_z, packed[1], mean_x


class _VocabParallelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, tp_group, chunk_size, with_entropy, vocab_size, temperature):
        tp, tp_rank = _tp_size_rank(tp_group)
        n, local = logits.shape
        vocab_start = tp_rank * local
        log_z = logits.new_empty(n, dtype=torch.float32)
        mean_x = logits.new_empty(n, dtype=torch.float32) if with_entropy else None
        logprobs = logits.new_empty(n, dtype=torch.float32)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            x = _chunk_logits(logits, start, stop, vocab_start, vocab_size, temperature)
            lz, t_logit, mx = _chunk_stats(x, targets[start:stop], vocab_start, tp_group, tp, with_entropy)
            log_z[start:stop] = lz
            logprobs[start:stop] = t_logit - lz
            if with_entropy:
                mean_x[start:stop] = mx
            del x  # free this chunk before the next one is allocated
        ctx.save_for_backward(logits, targets, log_z, mean_x if with_entropy else log_z)
        ctx.args = (chunk_size, with_entropy, vocab_size, temperature, vocab_start)
        entropy = (log_z - mean_x) if with_entropy else None
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        logits, targets, log_z, mean_x = ctx.saved_tensors
        chunk_size, with_entropy, vocab_size, temperature, vocab_start = ctx.args
        n, local = logits.shape
        grad = torch.empty_like(logits)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            x = _chunk_logits(logits, start, stop, vocab_start, vocab_size, temperature)
            # Two [chunk, V/tp] float32 buffers live here: x (reused in place) and p.
            p = (x - log_z[start:stop].unsqueeze(-1)).exp_()
            entropy_term = None
            if with_entropy and grad_entropy is not None:
                # -p_v (x_v - E[x]) g_H; on padded rows p_v == 0 and x_v - E[x] stays finite.
                entropy_term = x.sub_(mean_x[start:stop].unsqueeze(-1)).mul_(p)
                entropy_term.mul_(grad_entropy[start:stop].float().unsqueeze(-1))
            if grad_logprobs is not None:
                g_lp = grad_logprobs[start:stop].float()
                g = p.mul_(-g_lp.unsqueeze(-1))
                local_t = targets[start:stop] - vocab_start
                rows = torch.nonzero((local_t >= 0) & (local_t < local)).squeeze(-1)
                g[rows, local_t[rows]] += g_lp[rows]
            else:
                g = p.zero_()
            if entropy_term is not None:
                g.sub_(entropy_term)
            if temperature != 1.0:
                g.div_(temperature)
            grad[start:stop] = g
            del x, p, g, entropy_term  # free this chunk before the next one is allocated
        return grad, None, None, None, None, None, None


def compute_token_logprobs(logits_shard: torch.Tensor, targets: torch.Tensor, *, tp_group=None,
                           chunk_size: int | None = None, with_entropy: bool = False,
                           vocab_size: int | None = None, temperature: float = 1.0):
    """Log-prob of each target token (and the entropy) from this rank's vocabulary shard.

    logits_shard: [..., V/tp] logits for this tp rank's vocabulary slice (rank r holds ids
        [r*V/tp, (r+1)*V/tp)), any float dtype. Not modified.
    targets: [...] int64 token ids in the *global* vocabulary, same leading shape.
    tp_group: the tensor-parallel process group (None: the default group, or no
        distributed at all, meaning tp=1).
    chunk_size: tokens per chunk (None: all at once). Extra memory: two float32 [chunk_size, V/tp]
        buffers (+ O(tokens) per-token statistics), besides the logits' own gradient.
    vocab_size: the real vocabulary size; ids >= it are padding and get probability 0.
    Returns float32 logprobs [...] and, when with_entropy, entropy [...]; differentiable.
    """
    if logits_shard.shape[:-1] != targets.shape:
        raise ValueError(f"compute_token_logprobs: targets shape {tuple(targets.shape)} must equal "
                         f"logits_shard.shape[:-1] = {tuple(logits_shard.shape[:-1])}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"compute_token_logprobs: chunk_size must be >= 1 or None, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"compute_token_logprobs: temperature must be > 0, got {temperature}")
    lead = targets.shape
    try:
        flat_logits = logits_shard.view(-1, logits_shard.shape[-1])
    except RuntimeError:
        # Not flattenable without a copy (e.g. logits[:, k:-1] of a [B, S, V] tensor): score each
        # leading slice on its own rather than copying all the logits.
        kwargs = dict(tp_group=tp_group, chunk_size=chunk_size, with_entropy=with_entropy,
                      vocab_size=vocab_size, temperature=temperature)
        parts = [compute_token_logprobs(logits_shard[i], targets[i], **kwargs) for i in range(lead[0])]
        if with_entropy:
            return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
        return torch.stack(parts)
    flat_targets = targets.reshape(-1).long()
    _check_targets(flat_targets, flat_logits.shape[-1] * _tp_size_rank(tp_group)[0], vocab_size)
    chunk = chunk_size or max(flat_targets.numel(), 1)
    logprobs, entropy = _VocabParallelLogprobs.apply(
        flat_logits, flat_targets, tp_group, chunk, with_entropy, vocab_size, temperature)
    if with_entropy:
        return logprobs.view(lead), entropy.view(lead)
    return logprobs.view(lead)


def _check_targets(targets, padded_vocab, vocab_size):
    if targets.numel() == 0:
        return
    limit = vocab_size if vocab_size is not None else padded_vocab
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= limit:
        raise ValueError(f"compute_token_logprobs: target ids must lie in [0, {limit}), got [{low}, {high}]")
