"""Per-token log-probs (and entropy) from final hidden states without full-vocabulary logits.

`compute_fused_token_logprobs` is the single entry point; the trainer picks the path with its
`logprob_impl` config value:

- "chunked" (default, runs everywhere): torch matmuls over vocabulary slices with a streaming
  log-sum-exp; backward recomputes slices. See `chunked_logprob.py`.
- "triton": Triton kernels fusing the logits matmul with the online log-sum-exp (forward) and
  with the logit-gradient epilogue (backward). CUDA + triton.
- "te": Transformer Engine's parallel cross entropy on a bf16 logits shard. CUDA + TE.

All paths are vocab-parallel over `tp_group` (None: no tensor parallelism) and return fp32.

Implicit rewards are left to the caller on purpose: the PRM pass returns per-token log-probs
[N] with their graph, `beta * (prm_logprobs.detach() - ref_logprobs)` is a [N]-sized
subtraction on a view (no copy of anything vocabulary-sized), and the formula lives once, in
`prime_megatron.reward.implicit.compute_implicit_rewards`. The same `prm_logprobs` tensor
then feeds the PRM loss, whose backward runs through this module.
"""
from __future__ import annotations

import torch

from .chunked_logprob import CHUNKED_KERNELS, compute_vocab_parallel_token_logprobs

LOGPROB_IMPLS = ("chunked", "triton", "te")
# Token rows' worth of logits held at once: 512 x 152064 fp32 is 311 MB at tp=1, under 1/8 of
# the naive path's fp32 logits for 4k tokens (2.5 GB), while slices stay wide enough
# (N x 512*V/N) for full-speed GEMMs.
DEFAULT_CHUNK_SIZE = 512


def compute_fused_token_logprobs(
    hidden: torch.Tensor,
    output_weight_shard: torch.Tensor,
    targets: torch.Tensor,
    *,
    tp_group,
    impl: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
):
    """log p(targets) (and entropy) for every position, differentiable wrt hidden and weight.

    hidden: [..., H] final hidden states (after the final norm), replicated over `tp_group`.
    output_weight_shard: [V/tp, H] this rank's rows of the output layer (megatron's
        `output_layer.weight`, or the word embeddings when they are tied).
    targets: [...] token ids in [0, V) of the padded vocabulary (padding positions too: give
        them any valid id and mask the result with `response_mask`).
    chunk_size: token rows' worth of fp32 logits the chunked paths hold at once
        (chunk_size x V/tp values); "triton" holds none, "te" holds all N rows in bf16.
    Returns logprobs [...] fp32, and entropy [...] fp32 when `with_entropy`.
    """
    if impl not in LOGPROB_IMPLS:
        raise ValueError(f"logprob impl must be one of {LOGPROB_IMPLS}, got {impl!r}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must match hidden's leading dims {tuple(hidden.shape[:-1])}"
        )
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if impl == "te":
        from .te_logprob import compute_te_token_logprobs

        out = compute_te_token_logprobs(
            flat_hidden, output_weight_shard, flat_targets, tp_group=tp_group, with_entropy=with_entropy
        )
    else:
        kernels = CHUNKED_KERNELS
        if impl == "triton":
            from .triton_logprob import TRITON_KERNELS as kernels
        out = compute_vocab_parallel_token_logprobs(
            flat_hidden, output_weight_shard, flat_targets, tp_group=tp_group, chunk_size=chunk_size,
            with_entropy=with_entropy, kernels=kernels,
        )
    if with_entropy:
        return out[0].view(targets.shape), out[1].view(targets.shape)
    return out.view(targets.shape)
