"""Per-token log-probs through Transformer Engine's vocab-parallel cross entropy.

TE's Triton cross entropy (`transformer_engine.pytorch.cross_entropy.parallel_cross_entropy`,
the kernel megatron-core uses for `cross_entropy_fusion_impl='te'`) computes the loss from a
logits shard in one pass with fp32 math and writes the logits' gradient into the logits buffer
in place. It still needs the [N, V/tp] logits in the input dtype (bf16: half the bytes of the
naive path's fp32 copy, and no extra copy for the gradient), but no recomputation: backward is
the two matmuls autograd runs for `hidden @ weight.T`.

log p(y) = -CE(y). TE has no entropy output, so `with_entropy=True` is refused here.
Needs Transformer Engine with CUDA (NGC PyTorch containers ship it).
"""
from __future__ import annotations

import torch

from .chunked_logprob import check_logprob_inputs, tp_rank_and_size

try:
    from transformer_engine.pytorch.cross_entropy import parallel_cross_entropy
except (ImportError, OSError):  # OSError: TE's wheel imports but cannot load libcuda
    parallel_cross_entropy = None


def te_unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why impl='te' cannot run here (None when it can)."""
    if parallel_cross_entropy is None:
        return "impl='te' needs Transformer Engine: pip install transformer-engine[pytorch] (or an NGC container)"
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return "impl='te' needs CUDA tensors"
    return None


def compute_te_token_logprobs(
    hidden: torch.Tensor,
    output_weight_shard: torch.Tensor,
    targets: torch.Tensor,
    *,
    tp_group,
    with_entropy: bool = False,
) -> torch.Tensor:
    """Per-token log-probs [N] fp32 from hidden [N, H] and weight shard [V/tp, H] via TE."""
    if with_entropy:
        raise ValueError("impl='te' computes log-probs only (TE has no entropy); use impl='chunked' or 'triton'")
    reason = te_unavailable_reason(hidden.device)
    if reason is not None:
        raise RuntimeError(reason)
    check_logprob_inputs(hidden, output_weight_shard, targets, tp_rank_and_size(tp_group)[1])
    logits = hidden @ output_weight_shard.t()
    # TE wants (batch, seq, vocab); its loss is -log p in fp32. Args: label_smoothing, reduce_loss, group.
    loss = parallel_cross_entropy(logits.unsqueeze(0), targets.long().unsqueeze(0), 0.0, False, tp_group)
    return -loss.squeeze(0).float()
