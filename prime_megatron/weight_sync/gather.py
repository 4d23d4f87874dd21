"""Stream a megatron model's TP/PP shards as full tensors under their HF names.

`iter_hf_tensors` is collective over the ranks of data-parallel replica 0 (other replicas
hold the same weights and do nothing: only ranks that must send do). On every pipeline
stage the tensor-parallel ranks all-gather one parameter at a time (`compute_tp_gather`
undoes each TP layout, including the [gate_r; up_r] interleave of linear_fc1); the stage's
TP rank 0 renames it to its global layer index and splits it into HF tensors (q/k/v,
gate/up, vocab padding dropped) with `checkpoint/hf_mapping.megatron_to_hf`, and yields
them. So each stage's sender streams its own layers, concurrently with the other stages,
and at most one full parameter is alive at a time per rank.

`iter_hf_tensors_on_rank` funnels those per-stage streams to one process (the holder of a
rollout engine, or a test): stage senders pass each tensor to it point-to-point, stage by
stage. Both are generators that every rank must drive to the end (drop the items where
nothing is yielded). Left out: dtype casting (cast before bucketing), expert parallelism,
virtual pipeline stages.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from prime_megatron.checkpoint.hf_mapping import (
    compute_tp_gather,
    hf_names_for,
    megatron_to_hf,
    to_global_name,
    tp_split_dim,
)
from prime_megatron.models.builder import unwrap_model


def stage_layer_offset(model) -> int:
    """Global index of this pipeline stage's first layer (megatron's 1-based layer_number - 1)."""
    layers = getattr(getattr(model, "decoder", None), "layers", None)
    if not layers:
        return 0
    return int(layers[0].layer_number) - 1


def _gather_tp(name: str, shard: torch.Tensor, *, parallel) -> torch.Tensor:
    if parallel.tp == 1 or tp_split_dim(name) is None:
        return shard.detach()
    shards = [torch.empty_like(shard) for _ in range(parallel.tp)]
    dist.all_gather(shards, shard.detach().contiguous(), group=parallel.tp_group)
    return compute_tp_gather(name, shards)


def iter_hf_tensors(model, *, parallel, arch) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, full tensor) for this stage's parameters on its DP-0, TP-0 rank.

    Every rank must iterate it (TP ranks take part in the all-gathers); ranks that are not a
    stage sender yield nothing. Tensors come in the model's parameter order, in its dtype.
    """
    if parallel.dp_rank != 0:
        return
    model = unwrap_model(model)  # names without "module."
    offset = stage_layer_offset(model)
    for local_name, param in model.named_parameters():
        name = to_global_name(local_name, offset)
        if not hf_names_for(name, arch):
            continue  # output_layer of a tied model: HF has no lm_head, skip the gather too
        full = _gather_tp(name, param, parallel=parallel)
        if parallel.tp_rank == 0:
            yield from megatron_to_hf(name, full, arch)


def _stage_senders(parallel) -> list[int]:
    """Global rank of the (dp 0, tp 0) rank of each pipeline stage, in stage order."""
    coords = [None] * parallel.world_size
    dist.all_gather_object(coords, (parallel.dp_rank, parallel.tp_rank, parallel.pp_rank))
    senders = {pp: rank for rank, (dp, tp, pp) in enumerate(coords) if dp == 0 and tp == 0}
    return [senders[stage] for stage in range(parallel.pp)]


def iter_hf_tensors_on_rank(model, *, parallel, arch, dst: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Like `iter_hf_tensors`, but every tensor of every stage is yielded on global rank `dst`
    only (in layer order), sent point-to-point by the stage senders. Collective over all ranks."""
    return forward_to_rank(iter_hf_tensors(model, parallel=parallel, arch=arch), parallel=parallel, dst=dst)


def forward_to_rank(named_tensors: Iterator[tuple[str, torch.Tensor]], *, parallel,
                    dst: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Funnel each rank's `iter_hf_tensors` stream to global rank `dst`, stage by stage.

    Collective: every rank passes its own (lazy) stream; it is driven while the loop is at
    that rank's pipeline stage, so TP peers still meet in their all-gathers.
    """
    senders = _stage_senders(parallel)
    if dst not in senders:
        raise ValueError(f"forward_to_rank: dst={dst} must be a stage sender (the dp 0, tp 0 rank of a "
                         f"pipeline stage: one of {senders}); global rank 0 always is")
    rank = dist.get_rank()
    for stage, sender in enumerate(senders):
        if stage == parallel.pp_rank:
            for name, tensor in named_tensors:
                if rank == dst:
                    yield name, tensor
                else:
                    dist.send_object_list([(name, tuple(tensor.shape), tensor.dtype)], dst=dst)
                    dist.send(tensor.contiguous(), dst=dst)
            if rank == sender and rank != dst:
                dist.send_object_list([None], dst=dst)  # end of this stage's stream
        elif rank == dst and sender != dst:
            yield from _receive_stage(sender)


def _receive_stage(sender: int) -> Iterator[tuple[str, torch.Tensor]]:
    while True:
        header = [None]
        dist.recv_object_list(header, src=sender)
        if header[0] is None:
            return
        name, shape, dtype = header[0]
        tensor = torch.empty(shape, dtype=dtype)
        if torch.cuda.is_available():
            tensor = tensor.cuda()
        dist.recv(tensor, src=sender)
        yield name, tensor
