"""The naive per-token log-prob: full logits, log_softmax, gather.

This is what the fused paths replace. It materialises [N, V] logits in the input dtype and
again in fp32 (plus the same again for their gradients), which is what runs a 152k-vocabulary
model out of memory. It is kept as the obviously-correct reference for tests and as the
baseline of `benchmarks/logprob.py`; it takes the full (unsharded) output weight.
"""
from __future__ import annotations

import torch


def compute_naive_token_logprobs(
    hidden: torch.Tensor, output_weight: torch.Tensor, targets: torch.Tensor, *, with_entropy: bool = False
):
    """log p(targets) [N] (and entropy [N]) from hidden [N, H] and the full weight [V, H]."""
    logits = (hidden @ output_weight.t()).to(torch.promote_types(hidden.dtype, torch.float32))
    log_probs = torch.log_softmax(logits, dim=-1)
    logprobs = log_probs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logprobs
    return logprobs, -(log_probs.exp() * log_probs).sum(dim=-1)
