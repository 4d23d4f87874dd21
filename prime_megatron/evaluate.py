"""Held-out accuracy: sample (greedy by default) on validation prompts and grade with the verifiers.

Collective over all ranks (the rollout engine is); rank 0 grades and the mean is broadcast.
Left out: pass@k and per-benchmark breakdowns (use the HF export with an evaluation harness).
"""
from __future__ import annotations

import torch.distributed as dist

from prime_megatron.rollout.types import SamplingParams


def compute_heldout_accuracy(engine, prompts, scorer, params: SamplingParams, *, batch_size: int = 64) -> float:
    """Mean outcome reward over `prompts` (TokenizedPrompt list), one sample each unless params.n > 1."""
    total, count = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        samples = engine.generate([list(p.prompt_ids) for p in chunk], params)
        if scorer is not None:
            scores, _ = scorer(chunk, samples)
            total, count = total + sum(scores), count + len(scores)
    accuracy = [total / max(count, 1)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(accuracy, src=0)
    return accuracy[0]
