"""Vocab-sharded log-probs at TP=2 on gloo vs the unsharded naive computation."""
import torch
import torch.distributed as dist

from prime_megatron.kernels import compute_fused_token_logprobs
from prime_megatron.kernels.naive import compute_naive_token_logprobs
from tests.distributed import run_distributed

N, H, V_LOCAL, TP = 29, 16, 23, 2


def _case(dtype, seed, targets_on_rank0_only):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(TP * V_LOCAL, H, generator=gen, dtype=torch.float64) * 0.7).to(dtype)
    high = V_LOCAL if targets_on_rank0_only else TP * V_LOCAL
    targets = torch.randint(0, high, (N,), generator=gen)
    upstream = torch.randn(2, N, generator=gen, dtype=torch.float64)
    return hidden, weight, targets, upstream


def _sharded(rank, group, hidden, weight, targets, upstream):
    h = hidden.clone().requires_grad_()
    shard = weight[rank * V_LOCAL : (rank + 1) * V_LOCAL].clone().requires_grad_()
    logp, entropy = compute_fused_token_logprobs(h, shard, targets, tp_group=group, chunk_size=4, with_entropy=True)
    ((logp * upstream[0]).sum() + (entropy * upstream[1]).sum()).backward()
    return logp.detach(), entropy.detach(), h.grad, shard.grad


def _unsharded(rank, hidden, weight, targets, upstream):
    h, w = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logp, entropy = compute_naive_token_logprobs(h, w, targets, with_entropy=True)
    ((logp * upstream[0]).sum() + (entropy * upstream[1]).sum()).backward()
    return logp.detach(), entropy.detach(), h.grad, w.grad[rank * V_LOCAL : (rank + 1) * V_LOCAL]


def _worker(rank, world_size):
    dist.init_process_group("gloo")
    group = dist.new_group(list(range(world_size)))  # a non-default group, as megatron's TP group is
    # (dtype, absolute tolerance): fp64 leaves only reassociation (1e-10); fp32 sums over H=16 and
    # V=46 terms of size <~5 err by well under 1e-4 (eps32 = 1.2e-7, x~100 for sums and exp).
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        for seed, rank0_only in ((0, False), (1, True)):  # (1, True): rank 1 owns no target at all
            case = _case(dtype, seed, rank0_only)
            got = _sharded(rank, group, *case)
            want = _unsharded(rank, *case)
            for name, g, w in zip(("logp", "entropy", "grad_hidden", "grad_weight_shard"), got, want):
                torch.testing.assert_close(g.double(), w, rtol=0, atol=tol, msg=lambda m: f"{name} {dtype}: {m}")
    return True


def test_tp2_matches_unsharded():
    assert run_distributed(_worker, world_size=TP, timeout_s=120) == [True, True]
