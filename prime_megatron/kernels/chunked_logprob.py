"""Vocab-parallel per-token log-probs and entropy straight from hidden states, chunked.

For hidden states h [N, H] and this rank's shard W [V/tp, H] of the output layer, computes

    logp[i]    = l[i, y_i] - logsumexp_v l[i, v]          with l = h @ W_full^T
    entropy[i] = -sum_v p[i, v] log p[i, v]

without ever holding [N, V/tp] logits (let alone fp32 full-vocab logits). The local vocabulary
is walked in column slices; each slice's logits are folded into per-token streaming statistics
(running max m, sum of exp(l - m), and, for entropy, sum of exp(l - m) * (l - m)). The per-rank
statistics are combined across the tensor-parallel group with one MAX and one SUM all-reduce,
the same decomposition as megatron-core's `tensor_parallel/cross_entropy.py`; the target logit
comes from the rank whose shard holds the target id.

Backward recomputes each slice's logits from (h, W) and the saved per-token log-sum-exp instead
of saving them, so a backward pass costs three matmuls (recompute, grad_hidden, grad_weight).
Every slice of grad_weight comes out of one matmul (accumulated in fp32 inside the GEMM), and
grad_hidden is accumulated in fp32 across slices, so low-precision inputs lose nothing to
chunking. `hidden` is treated as replicated over the TP group (like the input of megatron's
ColumnParallelLinear), so its gradient is all-reduced here.

The working set is bounded by `chunk_size x V/tp` logits (a slice holds N rows times
`chunk_size * V/tp // N` columns), plus an fp32 [N, H] accumulator for grad_hidden in backward.

Left out on purpose: sequence parallelism (the caller gathers the sequence first), label
smoothing, ignore-index (give padded positions any valid id and mask the result with
`response_mask`).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.distributed as dist


class TokenStats(NamedTuple):
    """Per-token softmax statistics over some part of the vocabulary, [N] each, fp32 (fp64 for fp64 inputs)."""

    max: torch.Tensor  # m: running max of the logits
    sum_exp: torch.Tensor  # s = sum_v exp(l_v - m)
    sum_exp_shifted: torch.Tensor | None  # u = sum_v exp(l_v - m) * (l_v - m); entropy only
    target_logit: torch.Tensor  # l_y if this part holds the target y, else 0


class SliceGradInputs(NamedTuple):
    """What backward needs per token ([N] each, fp32/fp64) to rebuild d loss / d logits."""

    local_targets: torch.Tensor  # index into this shard, -1 where another rank owns the target
    lse: torch.Tensor  # log-sum-exp over the full vocabulary
    entropy: torch.Tensor | None  # only with a gradient wrt entropy
    grad_logprobs: torch.Tensor
    grad_entropy: torch.Tensor | None


class LogprobKernels(NamedTuple):
    """The two device-specific pieces of the vocab-parallel log-prob; the rest is shared.

    local_stats(hidden [N,H], weight [V_local,H], local_targets [N], with_entropy, chunk_size)
        -> this shard's TokenStats.
    slice_grad_logits(hidden, weight_slice [c,H], first_column, SliceGradInputs)
        -> d loss / d logits for that slice, [N, c] in hidden's dtype.
    """

    local_stats: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, int], TokenStats]
    slice_grad_logits: Callable[[torch.Tensor, torch.Tensor, int, SliceGradInputs], torch.Tensor]


def vocab_slice_width(num_tokens: int, local_vocab: int, chunk_size: int) -> int:
    """Columns per slice so that one slice holds at most chunk_size x local_vocab logits."""
    return max(1, min(local_vocab, (chunk_size * local_vocab) // max(num_tokens, 1)))


def rescale_stats(stats: TokenStats, new_max: torch.Tensor) -> TokenStats:
    """Express `stats` relative to a larger max (new_max >= stats.max, both finite)."""
    delta = stats.max - new_max
    scale = delta.exp()
    u = stats.sum_exp_shifted
    if u is not None:
        # l - M = (l - m) + delta, so sum e^(l-M) (l-M) = e^delta * (u + delta * s).
        u = (u + delta * stats.sum_exp) * scale
    return TokenStats(new_max, stats.sum_exp * scale, u, stats.target_logit)


def merge_stats(a: TokenStats, b: TokenStats) -> TokenStats:
    """Statistics of the union of two disjoint vocabulary parts."""
    new_max = torch.maximum(a.max, b.max)
    a, b = rescale_stats(a, new_max), rescale_stats(b, new_max)
    u = None if a.sum_exp_shifted is None else a.sum_exp_shifted + b.sum_exp_shifted
    return TokenStats(new_max, a.sum_exp + b.sum_exp, u, a.target_logit + b.target_logit)


def _logits_dtype(dtype: torch.dtype) -> torch.dtype:
    # Softmax statistics are fp32 at least (bf16/fp16 logits are upcast per slice); fp64 stays fp64.
    return torch.promote_types(dtype, torch.float32)


def _slice_stats(logits: torch.Tensor, local_targets: torch.Tensor, v0: int, with_entropy: bool) -> TokenStats:
    """TokenStats of one [N, c] fp32 logits slice covering local columns [v0, v0 + c). Consumes `logits`."""
    cols = logits.shape[1]
    in_slice = (local_targets >= v0) & (local_targets < v0 + cols)
    index = (local_targets - v0).clamp(0, cols - 1).unsqueeze(1)
    target_logit = torch.where(in_slice, logits.gather(1, index).squeeze(1), 0.0)
    m = logits.amax(dim=1)
    shifted = logits.sub_(m.unsqueeze(1))
    if with_entropy:
        e = shifted.exp()
        sum_exp = e.sum(dim=1)
        return TokenStats(m, sum_exp, e.mul_(shifted).sum(dim=1), target_logit)
    return TokenStats(m, shifted.exp_().sum(dim=1), None, target_logit)


def compute_local_stats_chunked(
    hidden: torch.Tensor, weight: torch.Tensor, local_targets: torch.Tensor, with_entropy: bool, chunk_size: int
) -> TokenStats:
    """This shard's statistics, streaming over vocabulary slices with torch matmuls."""
    width = vocab_slice_width(hidden.shape[0], weight.shape[0], chunk_size)
    stats = None
    for v0 in range(0, weight.shape[0], width):
        logits = (hidden @ weight[v0 : v0 + width].t()).to(_logits_dtype(hidden.dtype))
        part = _slice_stats(logits, local_targets, v0, with_entropy)
        stats = part if stats is None else merge_stats(stats, part)
    return stats


def tp_rank_and_size(tp_group) -> tuple[int, int]:
    if tp_group is None:
        return 0, 1
    return dist.get_rank(group=tp_group), dist.get_world_size(group=tp_group)


def reduce_stats_across_tp(stats: TokenStats, tp_group) -> TokenStats:
    """Combine every rank's shard statistics into full-vocabulary statistics (on every rank)."""
    if tp_rank_and_size(tp_group)[1] == 1:
        return stats
    global_max = stats.max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=tp_group)
    stats = rescale_stats(stats, global_max)
    parts = [stats.sum_exp, stats.target_logit]
    if stats.sum_exp_shifted is not None:
        parts.append(stats.sum_exp_shifted)
    summed = torch.stack(parts)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=tp_group)
    u = summed[2] if stats.sum_exp_shifted is not None else None
    return TokenStats(global_max, summed[0], u, summed[1])


def check_logprob_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, tp_size: int) -> None:
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [N, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"output_weight_shard must be [V/tp, H={hidden.shape[1]}], got shape {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and output_weight_shard ({weight.dtype}) must share a dtype")
    if targets.shape != hidden.shape[:1] or targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"targets must be an integer tensor of shape [{hidden.shape[0]}], "
            f"got {targets.dtype} of shape {tuple(targets.shape)}"
        )
    vocab = weight.shape[0] * tp_size
    if targets.numel():
        low, high = torch.stack(torch.aminmax(targets)).tolist()  # one host sync
        if low < 0 or high >= vocab:
            raise ValueError(
                f"targets must lie in [0, {vocab}) (V/tp={weight.shape[0]} x tp={tp_size}), got range [{low}, {high}]"
            )


def _local_targets(targets: torch.Tensor, local_vocab: int, tp_rank: int) -> torch.Tensor:
    """Targets as indices into this rank's shard, -1 where another rank owns them."""
    local = targets.long() - tp_rank * local_vocab
    return torch.where((local >= 0) & (local < local_vocab), local, -1)


def compute_slice_grad_logits_chunked(
    hidden: torch.Tensor, weight_slice: torch.Tensor, v0: int, inputs: SliceGradInputs
) -> torch.Tensor:
    """Recompute one [N, c] logits slice and turn it into d loss / d logits (hidden's dtype).

    d logp_i / d l_iv = [v == y_i] - p_iv ;  d H_i / d l_iv = -p_iv (log p_iv + H_i).
    """
    log_p = (hidden @ weight_slice.t()).to(inputs.lse.dtype).sub_(inputs.lse.unsqueeze(1))
    grad_logprobs = inputs.grad_logprobs
    if inputs.grad_entropy is None:
        grad = log_p.exp_().mul_(-grad_logprobs.unsqueeze(1))
    else:
        p = log_p.exp()
        grad = log_p.add_(inputs.entropy.unsqueeze(1)).mul_(inputs.grad_entropy.unsqueeze(1))
        grad = grad.add_(grad_logprobs.unsqueeze(1)).mul_(p).neg_()
    cols = grad.shape[1]
    in_slice = (inputs.local_targets >= v0) & (inputs.local_targets < v0 + cols)
    index = (inputs.local_targets - v0).clamp(0, cols - 1).unsqueeze(1)
    # scatter_add with a zero where the target is elsewhere: no host sync, unlike boolean indexing.
    grad = grad.scatter_add_(1, index, torch.where(in_slice, grad_logprobs, 0.0).unsqueeze(1))
    return grad.to(hidden.dtype)


CHUNKED_KERNELS = LogprobKernels(compute_local_stats_chunked, compute_slice_grad_logits_chunked)


class _VocabParallelTokenLogprob(torch.autograd.Function):
    """Autograd wrapper: saves (hidden, weight, targets, per-token lse/entropy), never logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, tp_group, with_entropy, chunk_size, kernels):
        tp_rank, _ = tp_rank_and_size(tp_group)
        local_targets = _local_targets(targets, weight.shape[0], tp_rank)
        local = kernels.local_stats(hidden, weight, local_targets, with_entropy, chunk_size)
        stats = reduce_stats_across_tp(local, tp_group)
        log_sum_exp = stats.sum_exp.log()
        lse = stats.max + log_sum_exp
        logprobs = stats.target_logit - lse
        entropy = log_sum_exp - stats.sum_exp_shifted / stats.sum_exp if with_entropy else None
        ctx.save_for_backward(hidden, weight, local_targets, lse, entropy)
        ctx.tp_group, ctx.chunk_size, ctx.kernels = tp_group, chunk_size, kernels
        return (logprobs, entropy) if with_entropy else logprobs

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy=None):
        hidden, weight, local_targets, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        inputs = SliceGradInputs(
            local_targets,
            lse,
            entropy,
            torch.zeros_like(lse) if grad_logprobs is None else grad_logprobs.to(lse.dtype),
            None if grad_entropy is None else grad_entropy.to(lse.dtype),
        )
        grad_hidden = torch.zeros(hidden.shape, dtype=lse.dtype, device=hidden.device) if need_hidden else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        width = vocab_slice_width(hidden.shape[0], weight.shape[0], ctx.chunk_size)
        for v0 in range(0, weight.shape[0], width):
            w_slice = weight[v0 : v0 + width]
            grad_logits = ctx.kernels.slice_grad_logits(hidden, w_slice, v0, inputs)
            if need_weight:
                torch.mm(grad_logits.t(), hidden, out=grad_weight[v0 : v0 + width])
            if need_hidden:
                grad_hidden.add_(grad_logits @ w_slice)
        if need_hidden and tp_rank_and_size(ctx.tp_group)[1] > 1:
            # hidden is replicated over TP: its gradient is the sum of every shard's contribution.
            dist.all_reduce(grad_hidden, group=ctx.tp_group)
        grad_hidden = grad_hidden.to(hidden.dtype) if need_hidden else None
        return grad_hidden, grad_weight, None, None, None, None, None


def compute_vocab_parallel_token_logprobs(
    hidden: torch.Tensor,
    output_weight_shard: torch.Tensor,
    targets: torch.Tensor,
    *,
    tp_group,
    chunk_size: int,
    with_entropy: bool = False,
    kernels: LogprobKernels = CHUNKED_KERNELS,
):
    """Per-token log-probs [N] fp32 (and entropy [N]) from hidden [N, H] and the local weight shard.

    `kernels` supplies the shard's forward statistics and each backward slice's logit gradient
    (torch matmuls by default; the Triton kernels plug in here).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of token rows, got {chunk_size}")
    check_logprob_inputs(hidden, output_weight_shard, targets, tp_rank_and_size(tp_group)[1])
    return _VocabParallelTokenLogprob.apply(
        hidden, output_weight_shard, targets, tp_group, with_entropy, chunk_size, kernels
    )
