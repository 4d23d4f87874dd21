"""Triton kernels: the output-layer matmul fused with the softmax work on its logit tiles.

Forward (`_shard_stats_kernel`): one program owns BLOCK_N tokens and one contiguous split of
this rank's vocabulary shard. It computes [BLOCK_N, BLOCK_V] logit tiles with `tl.dot` (fp32
accumulators, never written to memory) and folds each into running per-token statistics: max m,
sum exp(l - m), for entropy sum exp(l - m)(l - m), and the target logit. The per-split
statistics ([4, splits, N] fp32, a few MB) are merged in torch, then across the TP group by the
shared code in `chunked_logprob.py`.

Backward (`_grad_logits_kernel`): per vocabulary slice, recomputes the logit tile and writes
d loss / d logits straight in the input dtype (2 bytes per logit instead of the chunked path's
fp32 round trips); the two gradient matmuls stay with cuBLAS. So backward is still three
matmuls; saving logits instead is what the "te" path does.

Logit tiles stay in fp32 here, while the chunked and naive paths round logits to the input dtype
first, so bf16 results differ by that rounding. Needs `triton` and a CUDA GPU; on CPU the
kernels run under the Triton interpreter (TRITON_INTERPRET=1, set before this module is
imported), which the tests use. Tile sizes are fixed, not autotuned.
"""
from __future__ import annotations

import os

import torch

from .chunked_logprob import LogprobKernels, SliceGradInputs, TokenStats, rescale_stats

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# Tile sizes for bf16 on A100/H100: a 128x128 fp32 accumulator over 8 warps, 64-wide K steps.
# Not autotuned (no GPU was at hand when this was written); benchmarks/logprob.py measures them.
GPU_BLOCKS = dict(BLOCK_N=128, BLOCK_V=128, BLOCK_K=64, num_warps=8, num_stages=3)
# The interpreter runs numpy per program: small tiles keep CPU tests fast.
INTERPRETER_BLOCKS = dict(BLOCK_N=16, BLOCK_V=16, BLOCK_K=16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why impl='triton' cannot run here (None when it can)."""
    if triton is None:
        return "impl='triton' needs the `triton` package: pip install triton (CUDA builds of torch ship it)"
    if _interpreting():
        return None
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernel on CPU)"
    return None


if triton is not None:

    @triton.jit
    def _logits_tile(
        h_ptr, w_ptr, rows, cols, row_ok, col_ok, K, stride_hn, stride_hk, stride_wv, stride_wk,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        """fp32 [BLOCK_N, BLOCK_V] tile of hidden @ weight^T for the given rows and weight rows."""
        h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_hn
        w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_wv
        acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            h = tl.load(h_rows + ks[None, :] * stride_hk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_cols + ks[:, None] * stride_wk, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
        return acc

    @triton.jit
    def _shard_stats_kernel(
        h_ptr, w_ptr, tgt_ptr, out_ptr,
        N, V, K, stride_hn, stride_hk, stride_wv, stride_wk, v_per_split,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
        WITH_ENTROPY: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        split = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        target = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
        m = tl.full([BLOCK_N], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_N], tl.float32)
        u = tl.zeros([BLOCK_N], tl.float32)
        t = tl.zeros([BLOCK_N], tl.float32)
        v_begin = split * v_per_split
        v_end = tl.minimum(v_begin + v_per_split, V)
        for v0 in range(v_begin, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < v_end
            acc = _logits_tile(
                h_ptr, w_ptr, rows, cols, row_ok, col_ok, K, stride_hn, stride_hk, stride_wv, stride_wk,
                BLOCK_N, BLOCK_V, BLOCK_K, DOT_PRECISION,
            )
            new_m = tl.maximum(m, tl.max(tl.where(col_ok[None, :], acc, float("-inf")), axis=1))
            shifted = tl.where(col_ok[None, :], acc - new_m[:, None], 0.0)
            e = tl.where(col_ok[None, :], tl.exp(shifted), 0.0)
            scale = tl.exp(m - new_m)
            if WITH_ENTROPY:
                # On the first tile m = -inf and s = 0: the where keeps (-inf * 0) out of u.
                u = (u + tl.where(s > 0, m - new_m, 0.0) * s) * scale + tl.sum(e * shifted, axis=1)
            s = s * scale + tl.sum(e, axis=1)
            m = new_m
            t += tl.sum(tl.where(cols[None, :] == target[:, None], acc, 0.0), axis=1)
        plane = tl.num_programs(1) * N
        base = out_ptr + split * N + rows
        tl.store(base, m, mask=row_ok)
        tl.store(base + plane, s, mask=row_ok)
        tl.store(base + 2 * plane, u, mask=row_ok)
        tl.store(base + 3 * plane, t, mask=row_ok)

    @triton.jit
    def _grad_logits_kernel(
        h_ptr, w_ptr, tgt_ptr, lse_ptr, ent_ptr, g_logp_ptr, g_ent_ptr, out_ptr,
        N, C, K, v0, stride_hn, stride_hk, stride_wv, stride_wk, stride_on,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
        WITH_ENTROPY: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        """d loss / d logits for columns [v0, v0 + C) of the shard, written in out's dtype."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        row_ok = rows < N
        col_ok = cols < C
        acc = _logits_tile(
            h_ptr, w_ptr, rows, cols, row_ok, col_ok, K, stride_hn, stride_hk, stride_wv, stride_wk,
            BLOCK_N, BLOCK_V, BLOCK_K, DOT_PRECISION,
        )
        log_p = acc - tl.load(lse_ptr + rows, mask=row_ok, other=0.0)[:, None]
        g_logp = tl.load(g_logp_ptr + rows, mask=row_ok, other=0.0)[:, None]
        coef = g_logp
        if WITH_ENTROPY:
            # d logp / d l_v = [v == y] - p_v ;  d H / d l_v = -p_v (log p_v + H)
            entropy = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)[:, None]
            coef += tl.load(g_ent_ptr + rows, mask=row_ok, other=0.0)[:, None] * (log_p + entropy)
        grad = -tl.exp(log_p) * coef
        target = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
        grad += tl.where((cols + v0)[None, :] == target[:, None], g_logp, 0.0)
        out = out_ptr + rows.to(tl.int64)[:, None] * stride_on + cols[None, :]
        tl.store(out, grad.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _vocab_splits(num_row_blocks: int, local_vocab: int, block_v: int, device: torch.device) -> tuple[int, int]:
    """(splits, columns per split): enough programs to fill the GPU, no empty split."""
    programs_wanted = 4 * (torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1)
    max_splits = triton.cdiv(local_vocab, block_v)
    splits = min(max_splits, max(1, triton.cdiv(programs_wanted, num_row_blocks)))
    per_split = triton.cdiv(triton.cdiv(local_vocab, splits), block_v) * block_v
    return triton.cdiv(local_vocab, per_split), per_split


def _launch_checks(hidden: torch.Tensor) -> dict:
    """Fail clearly when the kernels cannot run; return the tile sizes to launch with."""
    reason = triton_unavailable_reason(hidden.device)
    if reason is not None:
        raise RuntimeError(reason)
    if hidden.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"impl='triton' takes bf16/fp16/fp32 hidden states, got {hidden.dtype}")
    # fp32 inputs get exact fp32 products (tf32 would cost ~1e-3 relative error in the logits);
    # for bf16/fp16 the precision argument does not apply, so keep Triton's default.
    precision = "ieee" if hidden.dtype == torch.float32 else None
    return dict(INTERPRETER_BLOCKS if _interpreting() else GPU_BLOCKS, DOT_PRECISION=precision)


def compute_local_stats_triton(
    hidden: torch.Tensor, weight: torch.Tensor, local_targets: torch.Tensor, with_entropy: bool, chunk_size: int
) -> TokenStats:
    """This shard's TokenStats from the fused kernel. `chunk_size` is unused: nothing [N, V] is stored."""
    launch = _launch_checks(hidden)
    num_tokens, local_vocab = hidden.shape[0], weight.shape[0]
    row_blocks = triton.cdiv(num_tokens, launch["BLOCK_N"])
    splits, per_split = _vocab_splits(row_blocks, local_vocab, launch["BLOCK_V"], hidden.device)
    out = torch.empty((4, splits, num_tokens), dtype=torch.float32, device=hidden.device)
    _shard_stats_kernel[(row_blocks, splits)](
        hidden, weight, local_targets, out,
        num_tokens, local_vocab, hidden.shape[1],
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), per_split,
        WITH_ENTROPY=with_entropy, **launch,
    )
    m, s, u, t = out.unbind(0)
    merged_max = m.amax(dim=0)
    rescaled = rescale_stats(TokenStats(m, s, u if with_entropy else None, t), merged_max.unsqueeze(0))
    u_sum = rescaled.sum_exp_shifted.sum(dim=0) if with_entropy else None
    return TokenStats(merged_max, rescaled.sum_exp.sum(dim=0), u_sum, t.sum(dim=0))


def compute_slice_grad_logits_triton(
    hidden: torch.Tensor, weight_slice: torch.Tensor, v0: int, inputs: SliceGradInputs
) -> torch.Tensor:
    """d loss / d logits [N, c] (hidden's dtype) for one slice: recompute and epilogue in one kernel."""
    launch = _launch_checks(hidden)
    if inputs.lse.dtype != torch.float32:
        raise ValueError(f"impl='triton' keeps fp32 statistics, got {inputs.lse.dtype}")
    num_tokens, cols = hidden.shape[0], weight_slice.shape[0]
    out = torch.empty((num_tokens, cols), dtype=hidden.dtype, device=hidden.device)
    with_entropy = inputs.grad_entropy is not None
    grid = (triton.cdiv(num_tokens, launch["BLOCK_N"]), triton.cdiv(cols, launch["BLOCK_V"]))
    _grad_logits_kernel[grid](
        hidden, weight_slice, inputs.local_targets, inputs.lse,
        inputs.entropy if with_entropy else inputs.lse,  # unread without entropy
        inputs.grad_logprobs,
        inputs.grad_entropy if with_entropy else inputs.grad_logprobs,  # unread without entropy
        out,
        num_tokens, cols, hidden.shape[1], v0,
        hidden.stride(0), hidden.stride(1), weight_slice.stride(0), weight_slice.stride(1), out.stride(0),
        WITH_ENTROPY=with_entropy, **launch,
    )
    return out


TRITON_KERNELS = LogprobKernels(compute_local_stats_triton, compute_slice_grad_logits_triton)
