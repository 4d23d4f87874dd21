"""Triton kernel: output-layer matmul fused with an online log-sum-exp (forward statistics).

One program owns BLOCK_N tokens and one contiguous split of this rank's vocabulary shard. It
computes [BLOCK_N, BLOCK_V] logit tiles with `tl.dot` (fp32 accumulators, never written to
memory) and folds each tile into running per-token statistics: max m, sum exp(l - m), for
entropy sum exp(l - m)(l - m), and the target logit. The per-split statistics ([4, splits, N]
fp32, a few MB) are merged in torch and then across the TP group exactly as in the chunked path,
so this module only replaces `compute_local_stats_chunked`.

Backward is the chunked path's recomputation (three cuBLAS matmuls per vocabulary slice); a
fused Triton backward is left out. Logit tiles stay in fp32 here, while the chunked and naive
paths round logits to the input dtype first, so bf16 results differ by that rounding.

Needs `triton` and a CUDA GPU; on CPU the kernel runs under the Triton interpreter
(TRITON_INTERPRET=1, set before this module is imported), which the tests use.
"""
from __future__ import annotations

import os

import torch

from .chunked_logprob import TokenStats, rescale_stats

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
        h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_hn
        for v0 in range(v_begin, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < v_end
            w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_wv
            acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < K
                h = tl.load(h_rows + ks[None, :] * stride_hk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(w_cols + ks[:, None] * stride_wk, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
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


def _vocab_splits(num_row_blocks: int, local_vocab: int, block_v: int, device: torch.device) -> tuple[int, int]:
    """(splits, columns per split): enough programs to fill the GPU, no empty split."""
    programs_wanted = 4 * (torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1)
    max_splits = triton.cdiv(local_vocab, block_v)
    splits = min(max_splits, max(1, triton.cdiv(programs_wanted, num_row_blocks)))
    per_split = triton.cdiv(triton.cdiv(local_vocab, splits), block_v) * block_v
    return triton.cdiv(local_vocab, per_split), per_split


def compute_local_stats_triton(
    hidden: torch.Tensor, weight: torch.Tensor, local_targets: torch.Tensor, with_entropy: bool, chunk_size: int
) -> TokenStats:
    """This shard's TokenStats from the fused kernel. `chunk_size` is unused: nothing [N, V] is stored."""
    reason = triton_unavailable_reason(hidden.device)
    if reason is not None:
        raise RuntimeError(reason)
    if hidden.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"impl='triton' takes bf16/fp16/fp32 hidden states, got {hidden.dtype}")
    blocks = INTERPRETER_BLOCKS if _interpreting() else GPU_BLOCKS
    num_tokens, local_vocab = hidden.shape[0], weight.shape[0]
    row_blocks = triton.cdiv(num_tokens, blocks["BLOCK_N"])
    splits, per_split = _vocab_splits(row_blocks, local_vocab, blocks["BLOCK_V"], hidden.device)
    out = torch.empty((4, splits, num_tokens), dtype=torch.float32, device=hidden.device)
    _shard_stats_kernel[(row_blocks, splits)](
        hidden, weight, local_targets, out,
        num_tokens, local_vocab, hidden.shape[1],
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), per_split,
        WITH_ENTROPY=with_entropy,
        # fp32 inputs get exact fp32 products (tf32 would cost ~1e-3 relative error in the
        # logits); for bf16/fp16 the precision argument does not apply, so keep Triton's default.
        DOT_PRECISION="ieee" if hidden.dtype == torch.float32 else None,
        **blocks,
    )
    m, s, u, t = out.unbind(0)
    merged_max = m.amax(dim=0)
    rescaled = rescale_stats(TokenStats(m, s, u if with_entropy else None, t), merged_max.unsqueeze(0))
    u_sum = rescaled.sum_exp_shifted.sum(dim=0) if with_entropy else None
    return TokenStats(merged_max, rescaled.sum_exp.sum(dim=0), u_sum, t.sum(dim=0))
