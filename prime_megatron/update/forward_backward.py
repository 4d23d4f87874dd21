"""Micro-batched forward (and backward) of a GPTModel through megatron's pipeline schedules.

Three uses in a PRIME step, one code path:
  - `compute_logprobs`: reference and old-policy log-probs (forward only);
  - `train_on_batch` for the implicit PRM: forward + backward + optimizer step, with
    `return_logprobs=True` handing back the PRM log-probs of that same forward (PRIME's
    "after" order needs them for the implicit process rewards);
  - `train_on_batch` for the policy (PPO loss).

Padding: rows are sorted by total length (prompt + response) and cut into micro-batches of
`micro_batch_size` rows; each micro-batch is trimmed to its own longest row (no sort when
one micro-batch holds every row, or with sort_by_length=False). Padding is
then only the gap between rows of similar length, instead of every row padded to the batch
maximum, and the row-wise layout keeps megatron's standard causal attention (packing rows
into one sequence would need THD attention, which the local spec lacks). Right padding sits
after every real token, so causal attention never lets a real token see it.

Loss convention: the objective is the SUM over micro-batches of `loss_fn(...)`, so loss_fn
normalises by batch-level quantities. It receives `index`, the batch rows of its
micro-batch (a LongTensor on the batch's device), to slice batch-level tensors; a token-mean
PPO loss, for example, sums its micro-batch's token losses and divides by the response
tokens of the whole batch. The result is then independent of micro_batch_size and of the
length sort. Reported metrics: "loss" is that sum; every other metric loss_fn returns is
averaged over micro-batches. Across dp ranks megatron DDP averages the gradients.

Results (log-probs, metrics) are computed on the last pipeline stage and broadcast over the
pipeline group, so every rank returns the same values.

Left out: virtual pipeline stages, context parallelism, sequence packing.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from prime_megatron.models.builder import unwrap_model
from prime_megatron.models.logprobs import compute_token_logprobs
from prime_megatron.parallel import ParallelState
from prime_megatron.update.batch import SequenceBatch

DEFAULT_LOGPROB_CHUNK = 2048  # tokens per log-prob chunk: 2 x 2048 x V/tp float32 extra


@dataclass
class _MicroBatch:
    index: torch.Tensor  # [b] rows of the full batch
    input_ids: torch.Tensor  # [b, L] trimmed to the longest row of this micro-batch
    position_ids: torch.Tensor  # [b, L]
    prompt_lengths: torch.Tensor  # [b]
    response_lengths: torch.Tensor  # [b]


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def plan_micro_batches(batch: SequenceBatch, micro_batch_size: int, *, sort_by_length: bool = True) -> list[_MicroBatch]:
    """Micro-batches of `micro_batch_size` rows, each trimmed to its own longest row.

    Rows are length-sorted first (less padding) unless sort_by_length=False or one micro-batch
    holds the whole batch; then every micro-batch's `index` keeps the batch order, which a
    loss comparing rows inside a micro-batch (e.g. the pairwise PRM loss over groups) needs.
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if batch.batch_size == 0:
        raise ValueError("batch is empty: nothing to run through the model")
    if sort_by_length and micro_batch_size < batch.batch_size:
        order = torch.argsort(batch.sequence_lengths(), descending=True, stable=True)
    else:
        order = torch.arange(batch.batch_size, device=batch.input_ids.device)
    device = _device()
    plans = []
    for rows in torch.split(order, micro_batch_size):
        sub = batch.select(rows)
        width = sub.input_ids.shape[1]
        # Padding may hold any id (even out of vocabulary): feed token 0 there instead. Causal
        # attention keeps it invisible to real tokens and its scores are never picked.
        is_pad = torch.arange(width).unsqueeze(0) >= sub.sequence_lengths().cpu().unsqueeze(1)
        input_ids = sub.input_ids.masked_fill(is_pad.to(sub.input_ids.device), 0)
        plans.append(_MicroBatch(
            index=rows,
            input_ids=input_ids.to(device),
            position_ids=torch.arange(width, device=device).unsqueeze(0).expand(len(rows), -1),
            prompt_lengths=sub.prompt_lengths.to(device),
            response_lengths=sub.response_lengths.to(device),
        ))
    return plans


def _response_logprobs(logits, mb: _MicroBatch, width: int, *, score):
    """[b, width] log-probs (and entropies) of the response tokens; 0 beyond each response.

    `logits` is the model output ([b, L, V/tp] logits, or [b, L, H] hidden states for the fused
    kernels) and `score(output, targets)` turns it into per-position log-probs (, entropies).
    """
    with_entropy = score.keywords["with_entropy"]
    steps = torch.arange(width, device=logits.device)
    mask = steps.unsqueeze(0) < mb.response_lengths.unsqueeze(1)
    seq = mb.input_ids.shape[1]
    if seq < 2 or width == 0:
        zeros = logits.new_zeros(mb.input_ids.shape[0], width, dtype=torch.float32)
        return zeros, (zeros if with_entropy else None)
    # Position p's logits predict token p + 1, so response token j is scored at prompt_len - 1 + j.
    # Every position is scored (the last one against a dummy target) so the logits stay one
    # contiguous [b * L, V/tp] view: slicing them first would make autograd build full-size
    # zero-filled gradients for the slice. Unpicked positions get zero upstream gradient.
    targets = torch.cat([mb.input_ids[:, 1:], mb.input_ids[:, :1]], dim=1)
    out = score(logits, targets)
    logprobs_all, entropy_all = out if with_entropy else (out, None)
    cols = (mb.prompt_lengths.unsqueeze(1) - 1 + steps).clamp(max=seq - 2)

    def pick(values):
        return torch.where(mask, values.gather(1, cols), 0.0)

    return pick(logprobs_all), (pick(entropy_all) if with_entropy else None)


def _forward_step(data_iterator, model, *, on_logits, hidden_only=False):
    mb = next(data_iterator)
    if hidden_only:
        with _output_layer_passthrough(model):
            output = model(mb.input_ids, mb.position_ids, None)
    else:
        output = model(mb.input_ids, mb.position_ids, None)
    return output, partial(on_logits, mb)


@contextmanager
def _output_layer_passthrough(model):
    """Make GPTModel return its final hidden states [b, L, H] instead of logits, for the fused
    log-prob kernels that apply the output layer themselves (state-dict keys are unchanged)."""
    layer = unwrap_model(model).output_layer
    layer.forward = lambda hidden_states, *args, **kwargs: (hidden_states, None)
    try:
        yield
    finally:
        del layer.forward


def _output_weight(model):
    inner = unwrap_model(model)
    if inner.share_embeddings_and_output_weights:
        return inner.shared_embedding_or_output_weight()
    return inner.output_layer.weight


def _make_scorer(model, *, impl, tp_group, tp, chunk_size, with_entropy, temperature):
    """score(output, targets) for the chosen log-prob path (see update.logprob_impl)."""
    vocab_size = _real_vocab_size(model)
    if impl == "logits":
        return partial(_score_logits, tp_group=tp_group, chunk_size=chunk_size, with_entropy=with_entropy,
                       vocab_size=vocab_size, temperature=temperature)
    padded = _output_weight(model).shape[0] * tp
    if vocab_size is not None and vocab_size != padded:
        raise ValueError(f"logprob_impl={impl!r} normalises over the padded vocabulary ({padded} rows) but the "
                         f"model's vocabulary is {vocab_size}; use logprob_impl='logits', which excludes padding")
    if temperature != 1.0:
        raise ValueError(f"logprob_impl={impl!r} scores at temperature 1 only; use 'logits' for temperature {temperature}")
    return partial(_score_fused, weight=_output_weight(model), impl=impl, tp_group=tp_group,
                   with_entropy=with_entropy)


def _score_logits(logits, targets, **kwargs):
    return compute_token_logprobs(logits, targets, **kwargs)


def _score_fused(hidden, targets, *, weight, impl, tp_group, with_entropy):
    from prime_megatron.kernels import compute_fused_token_logprobs

    return compute_fused_token_logprobs(hidden, weight, targets, tp_group=tp_group, impl=impl,
                                        with_entropy=with_entropy)


def _real_vocab_size(model):
    """Unpadded vocab recorded by build_model; None counts the whole (padded) vocabulary."""
    return getattr(unwrap_model(model), "prime_vocab_size", None)


def _run_schedule(model, plans, on_logits, *, forward_only, hidden_only=False):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    schedule = get_forward_backward_func()
    return schedule(
        forward_step_func=partial(_forward_step, on_logits=on_logits, hidden_only=hidden_only),
        data_iterator=iter(plans),
        model=[model],
        num_microbatches=len(plans),
        seq_length=max(p.input_ids.shape[1] for p in plans),
        micro_batch_size=max(len(p.index) for p in plans),
        forward_only=forward_only,
    )


def _scatter_rows(per_mb, plans, key, batch_size, width):
    """Stack per-micro-batch [b, width] tensors back into batch order."""
    out = torch.zeros(batch_size, width, dtype=torch.float32, device=_device())
    for plan, record in zip(plans, per_mb):
        out[plan.index.to(out.device)] = record[key].float()
    return out


def _broadcast_from_last_stage(tensor, *, parallel: ParallelState):
    if parallel.pp > 1:
        dist.broadcast(tensor, src=parallel.last_stage_global_rank, group=parallel.pp_group)
    return tensor


def compute_logprobs(model, batch: SequenceBatch, *, parallel: ParallelState, micro_batch_size: int,
                     with_entropy: bool = False, logprob_chunk_size: int | None = DEFAULT_LOGPROB_CHUNK,
                     temperature: float = 1.0, sort_by_length: bool = True, logprob_impl: str = "logits"):
    """Forward-only response log-probs [B, T] (and entropies [B, T]); the same on every rank.

    Positions where batch.response_mask() is 0 hold 0. logprob_impl: "logits" (the model's
    vocab-parallel logits, models/logprobs.py) or a fused kernel from prime_megatron.kernels
    ("chunked", "triton", "te") applied to the final hidden states.
    """
    plans = plan_micro_batches(batch, micro_batch_size, sort_by_length=sort_by_length)
    width = batch.max_response_length
    score = _make_scorer(model, impl=logprob_impl, tp_group=parallel.tp_group, tp=parallel.tp,
                         chunk_size=logprob_chunk_size, with_entropy=with_entropy, temperature=temperature)

    def on_logits(mb, logits):
        lp, ent = _response_logprobs(logits, mb, width, score=score)
        record = {"logprobs": lp.detach()}
        if with_entropy:
            record["entropy"] = ent.detach()
        return logits.new_zeros(()), record

    with torch.no_grad():
        per_mb = _run_schedule(model, plans, on_logits, forward_only=True, hidden_only=logprob_impl != "logits")
    keys = ["logprobs", "entropy"] if with_entropy else ["logprobs"]
    results = []
    for key in keys:
        out = (_scatter_rows(per_mb, plans, key, batch.batch_size, width) if parallel.is_last_stage
               else torch.empty(batch.batch_size, width, dtype=torch.float32, device=_device()))
        results.append(_broadcast_from_last_stage(out, parallel=parallel))
    return tuple(results) if with_entropy else results[0]


def forward_backward(model, batch: SequenceBatch, loss_fn, *, parallel: ParallelState, micro_batch_size: int,
                     with_entropy: bool = False, logprob_chunk_size: int | None = DEFAULT_LOGPROB_CHUNK,
                     temperature: float = 1.0, return_logprobs: bool = False, sort_by_length: bool = True,
                     logprob_impl: str = "logits") -> dict:
    """Forward + backward over micro-batches; gradients accumulate, no optimizer step.

    loss_fn(logprobs [b, T], entropy [b, T] | None, index [b]) -> (loss, metrics dict); see the
    module docstring for the loss convention. Returns {"loss": float, **mean metrics} and, with
    return_logprobs, "logprobs" (and "entropy") as [B, T] tensors; identical on every rank.
    sort_by_length: see plan_micro_batches. logprob_impl: see compute_logprobs.
    """
    plans = plan_micro_batches(batch, micro_batch_size, sort_by_length=sort_by_length)
    width = batch.max_response_length
    score = _make_scorer(model, impl=logprob_impl, tp_group=parallel.tp_group, tp=parallel.tp,
                         chunk_size=logprob_chunk_size, with_entropy=with_entropy, temperature=temperature)
    num_mb = len(plans)

    def on_logits(mb, logits):
        lp, ent = _response_logprobs(logits, mb, width, score=score)
        loss, metrics = loss_fn(lp, ent, mb.index)
        record = {"loss": float(loss.detach()), "metrics": {k: float(v) for k, v in metrics.items()},
                  "logprobs": lp.detach()}
        if with_entropy:
            record["entropy"] = ent.detach()
        # megatron divides a 2-tuple loss by num_microbatches; undo it so the objective is the sum.
        return loss * num_mb, record

    per_mb = _run_schedule(model, plans, on_logits, forward_only=False, hidden_only=logprob_impl != "logits")
    summary = [_summarise(per_mb)] if parallel.is_last_stage else [None]
    if parallel.pp > 1:
        dist.broadcast_object_list(summary, src=parallel.last_stage_global_rank, group=parallel.pp_group)
    result = dict(summary[0])
    if return_logprobs:
        for key in (["logprobs", "entropy"] if with_entropy else ["logprobs"]):
            out = (_scatter_rows(per_mb, plans, key, batch.batch_size, width) if parallel.is_last_stage
                   else torch.empty(batch.batch_size, width, dtype=torch.float32, device=_device()))
            result[key] = _broadcast_from_last_stage(out, parallel=parallel)
    return result


def _summarise(per_mb) -> dict:
    """Sum of micro-batch losses; every other metric averaged over micro-batches."""
    summary = {"loss": sum(r["loss"] for r in per_mb)}
    names = per_mb[0]["metrics"].keys()
    for name in names:
        summary[name] = sum(r["metrics"][name] for r in per_mb) / len(per_mb)
    return summary


def train_on_batch(model, optimizer, batch: SequenceBatch, loss_fn, *, parallel: ParallelState,
                   micro_batch_size: int, **kwargs) -> dict:
    """Zero grads, forward_backward (same keywords), optimizer.step(); adds grad_norm to the result.

    `model` must be megatron-DDP wrapped, as build_optimizer returns it.
    """
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.utils import get_model_config

    if not hasattr(model, "zero_grad_buffer"):
        raise TypeError("train_on_batch: `model` must be wrapped by prime_megatron.update.optimizer.wrap_ddp, "
                        f"got {type(model).__name__}")
    config = get_model_config(model)
    config.finalize_model_grads_func = finalize_model_grads  # DP reduce + tied-embedding sync across pp
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = model.no_sync
    model.zero_grad_buffer()
    optimizer.zero_grad()
    result = forward_backward(model, batch, loss_fn, parallel=parallel, micro_batch_size=micro_batch_size, **kwargs)
    update_successful, grad_norm, _ = optimizer.step()
    result["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
    result["update_successful"] = float(bool(update_successful))
    return result
