"""ParallelState checks and init_parallel on 2 gloo ranks (layouts, idempotence, CPU shims).

The CPU shims (prime_megatron.cpu_compat) patch torch process-wide, so they are only ever
applied inside the spawned ranks, never in the pytest process.
"""
from __future__ import annotations

import pytest

from prime_megatron.parallel import ParallelState
from tests.distributed import run_distributed


def test_parallel_state_names_each_factor_when_sizes_disagree():
    with pytest.raises(ValueError, match=r"tp=2 x pp=2 x dp=1 = 4, but world_size=8"):
        ParallelState(tp=2, pp=2, dp=1, world_size=8, rank=0, tp_rank=0, pp_rank=0, dp_rank=0)
    with pytest.raises(ValueError, match=r"pp_rank=2 outside \[0, 2\)"):
        ParallelState(tp=1, pp=2, dp=1, world_size=2, rank=0, tp_rank=0, pp_rank=2, dp_rank=0)
    state = ParallelState(tp=1, pp=2, dp=1, world_size=2, rank=1, tp_rank=0, pp_rank=1, dp_rank=0)
    assert state.is_last_stage and not state.is_first_stage


def _worker(rank, world_size):
    import torch
    import torch.distributed as dist

    from prime_megatron import cpu_compat
    from prime_megatron.parallel import destroy_parallel, init_parallel

    out = {}
    tp2 = init_parallel(tp=2)
    out["tp2"] = (tp2.tp, tp2.pp, tp2.dp, tp2.tp_rank, tp2.pp_rank, tp2.dp_rank, tp2.rank)
    out["tp2_again_same"] = init_parallel(tp=2) == tp2  # idempotent: same sizes, same groups
    summed = torch.tensor([float(rank + 1)])
    dist.all_reduce(summed, group=tp2.tp_group)
    out["tp_sum"] = float(summed)
    pp2 = init_parallel(tp=1, pp=2)  # re-layout within the same process group
    out["pp2"] = (pp2.tp, pp2.pp, pp2.dp, pp2.pp_rank, pp2.is_first_stage, pp2.is_last_stage,
                  pp2.last_stage_global_rank)
    try:
        init_parallel(tp=3)
    except ValueError as err:
        out["tp3_error"] = str(err)
    # The CUDA -> CPU redirections megatron relies on.
    out["applied_twice"] = cpu_compat.apply_cpu_compat() and cpu_compat.cpu_compat_active()
    out["cuda_alloc_device"] = str(torch.empty(2, device="cuda").device)
    out["cuda_method_device"] = str(torch.ones(2).cuda().device)
    out["to_cuda_device"] = str(torch.ones(2).to("cuda").device)
    out["pinned"] = torch.empty(2, pin_memory=True).is_pinned()
    out["type_name"] = torch.ones(1).type()
    out["current_device"] = str(torch.cuda.current_device())
    out["cuda_available"] = torch.cuda.is_available()
    # Rank 0 hosts the rendezvous store: nobody may tear down while a peer still uses it.
    dist.barrier()
    destroy_parallel()
    out["destroyed"] = not dist.is_initialized()
    return out


def test_init_parallel_layouts_and_cpu_shims():
    results = run_distributed(_worker, world_size=2, timeout_s=240)
    for rank, out in enumerate(results):
        assert out["tp2"] == (2, 1, 1, rank, 0, 0, rank)
        assert out["tp2_again_same"]
        assert out["tp_sum"] == 3.0  # 1 + 2 over the tp group
        assert out["pp2"] == (1, 2, 1, rank, rank == 0, rank == 1, 1)
        assert "world_size=2 is not divisible by tp=3" in out["tp3_error"]
        assert out["applied_twice"]
        assert out["cuda_alloc_device"] == out["cuda_method_device"] == out["to_cuda_device"] == "cpu"
        assert out["pinned"] is False
        assert out["type_name"] == "torch.cuda.FloatTensor"
        assert out["current_device"] == "cpu"
        assert out["cuda_available"] is False  # the truth is still reported
        assert out["destroyed"]
