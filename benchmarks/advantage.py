"""Time compute_prime_advantages at the paper's scale against loop implementations.

    OMP_NUM_THREADS=2 python benchmarks/advantage.py [--batch 1024 --length 3072 --device cpu]

Three implementations of the same PRIME advantage (Eq. 5, whitened):
  vectorised   prime_megatron.advantage.compute_prime_advantages (the one the trainer uses);
  torch loop   a straightforward torch version: a Python loop over samples for the RLOO
               means and a loop over the T positions for the discounted return, each step
               vectorised over B (the structure of the reference implementations);
  python loop  tests/advantage/loop_reference.py, one token at a time on Python floats.
The python loop is timed on a subset of rows and scaled linearly to the full batch (its
cost is linear in B*T); the table says so. Every implementation's output on the subset is
checked against the vectorised one before timing is reported.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prime_megatron.advantage import compute_prime_advantages  # noqa: E402
from tests.advantage.loop_reference import loop_prime_advantages  # noqa: E402


def torch_loop_prime_advantages(process, outcome, mask, *, group_size, gamma):
    """Eq. 5 with per-sample and per-position loops (torch ops inside)."""
    k = group_size
    m = mask.bool()
    proc = torch.where(m, process, 0.0)
    means = torch.stack([proc[i][m[i]].mean() for i in range(proc.shape[0])])
    rewards = torch.zeros_like(proc)
    for i in range(proc.shape[0]):
        g0 = (i // k) * k
        others = [j for j in range(g0, g0 + k) if j != i]
        rewards[i] = torch.where(m[i], proc[i] - means[others].mean(), 0.0)
        last = int(torch.nonzero(m[i])[-1])
        rewards[i, last] += outcome[i] - outcome[others].mean()
    returns = torch.zeros_like(rewards)
    running = torch.zeros(proc.shape[0], dtype=proc.dtype, device=proc.device)
    for t in range(proc.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    returns = torch.where(m, returns, 0.0)
    picked = returns[m]
    return torch.where(m, (returns - picked.mean()) * torch.rsqrt(picked.var() + 1e-8), 0.0)


def _inputs(batch, length, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 8, length + 1, (batch,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).float()
    process = torch.randn(batch, length, generator=g) * 0.05
    outcome = torch.randint(0, 2, (batch,), generator=g).float()
    return process.to(device), outcome.to(device), mask.to(device)


def _time(fn, repeats, device):
    fn()  # warm-up (allocator, kernels)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--length", type=int, default=3072)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--loop-rows", type=int, default=8, help="rows the python loop is timed on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    k, dev = args.group_size, args.device
    process, outcome, mask = _inputs(args.batch, args.length, dev)
    kw = {"group_size": k, "gamma": args.gamma}

    sub = slice(0, args.loop_rows)
    check = compute_prime_advantages(process[sub], outcome[sub], mask[sub], **kw).double().cpu()
    for name, fn in (("torch loop", torch_loop_prime_advantages), ("python loop", loop_prime_advantages)):
        err = (fn(process[sub], outcome[sub], mask[sub], **kw).double().cpu() - check).abs().max().item()
        assert err < 1e-4, f"{name} disagrees with the vectorised result by {err}"

    full = _time(lambda: compute_prime_advantages(process, outcome, mask, **kw), args.repeats, dev)
    torch_loop = _time(lambda: torch_loop_prime_advantages(process, outcome, mask, **kw), args.repeats, dev)
    start = time.perf_counter()
    loop_prime_advantages(process[sub].cpu(), outcome[sub].cpu(), mask[sub].cpu(), **kw)
    py_sub = time.perf_counter() - start
    py_full = py_sub * args.batch / args.loop_rows

    print(f"PRIME advantages, B={args.batch} T={args.length} K={k} gamma={args.gamma} device={dev} "
          f"threads={torch.get_num_threads()} tokens={int(mask.sum())}")
    print(f"{'implementation':<14} {'rows timed':>10} {'seconds (full B)':>17} {'x vectorised':>13}")
    print(f"{'vectorised':<14} {args.batch:>10} {full:>17.4f} {1.0:>13.1f}")
    print(f"{'torch loop':<14} {args.batch:>10} {torch_loop:>17.4f} {torch_loop / full:>13.1f}")
    print(f"{'python loop':<14} {args.loop_rows:>10} {py_full:>17.2f} {py_full / full:>13.1f}")
    print(f"python loop: timed on {args.loop_rows} of {args.batch} rows ({py_sub:.3f} s) and scaled by "
          f"{args.batch / args.loop_rows:.0f}x (cost is linear in rows); vectorised and torch loop: best of {args.repeats}.")


if __name__ == "__main__":
    main()
