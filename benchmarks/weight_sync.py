"""Resharding throughput: megatron TP shards -> full HF-named tensors -> flat buckets.

    python benchmarks/weight_sync.py                 # TP=2 on 2 local processes (gloo on CPU)
    python benchmarks/weight_sync.py --layers 8 --hidden 1024 --dtype bf16 --repeats 5

Launches itself on `--tp` processes (or runs under torchrun). One model, one run, rows:
- memcpy:        one plain copy of the full model's bytes on rank 0 (the floor);
- all-gather:    only the TP all-gathers of every TP-sharded parameter (the communication);
- gather+rename: `iter_hf_tensors` (all-gather, undo TP layouts, global layer names, q/k/v
                 and gate/up split, vocab padding dropped);
- +bucket N MiB: the same stream through `bucketize` and `flatten_bucket` into one reused
                 staging buffer (what is sent). A bucket holds its gathered tensors until it is
                 flushed, so a large bucket touches fresh memory that a small one recycles.
GB/s = bytes of the full HF model / median wall time; the ratio is to memcpy. Left out: the
transfer to a rollout engine (CUDA IPC or NCCL broadcast; GPU-only).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--bucket-mib", type=int, nargs="+", default=[512, 32])
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def _arch(args):
    from prime_megatron.models.arch import ModelArch

    heads = args.hidden // 64
    return ModelArch(family="qwen2", vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                     num_layers=args.layers, num_attention_heads=heads, num_kv_heads=args.tp,
                     head_dim=64, rope_theta=1e6, rms_norm_eps=1e-6, qkv_bias=True, tie_word_embeddings=False,
                     max_position_embeddings=4096)


def _timed(fn, repeats):
    fn()  # warm-up: first-touch page faults and gloo buffer setup are not steady state
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        dist.barrier()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _run(args):
    from prime_megatron.checkpoint.hf_mapping import tp_split_dim, to_global_name
    from prime_megatron.models.builder import build_model
    from prime_megatron.parallel import destroy_parallel, init_parallel
    from prime_megatron.weight_sync.buckets import bucketize, flatten_bucket
    from prime_megatron.weight_sync.gather import iter_hf_tensors, stage_layer_offset

    parallel = init_parallel(tp=args.tp, pp=1)
    arch = _arch(args)
    model = build_model(arch, parallel=parallel, trainable=False, params_dtype=DTYPES[args.dtype])
    total = sum(t.numel() * t.element_size() for _, t in iter_hf_tensors(model, parallel=parallel, arch=arch))
    total = torch.tensor(total)
    dist.broadcast(total, src=0)
    total = int(total)
    src, dst = torch.ones(total, dtype=torch.uint8), torch.empty(total, dtype=torch.uint8)
    sharded = [(to_global_name(n, stage_layer_offset(model)), p) for n, p in model.named_parameters()]

    def all_gather_only():
        for name, p in sharded:
            if tp_split_dim(name) is not None:
                dist.all_gather([torch.empty_like(p) for _ in range(args.tp)], p.detach(), group=parallel.tp_group)

    def gather_rename():
        for _ in iter_hf_tensors(model, parallel=parallel, arch=arch):
            pass

    # One staging buffer reused for every bucket (as a sender would), like memcpy's dst.
    staging = torch.empty((max(args.bucket_mib) << 20) + (1 << 20), dtype=torch.uint8)

    def gather_rename_bucket(bucket_bytes):
        for bucket in bucketize(iter_hf_tensors(model, parallel=parallel, arch=arch), bucket_bytes):
            flatten_bucket(bucket, out=staging)

    rows = [("memcpy (rank 0)", _timed(lambda: dst.copy_(src), args.repeats)),
            ("all-gather only", _timed(all_gather_only, args.repeats)),
            ("gather+rename", _timed(gather_rename, args.repeats))]
    for mib in args.bucket_mib:
        rows.append((f"+bucket {mib} MiB", _timed(lambda: gather_rename_bucket(mib << 20), args.repeats)))
    if dist.get_rank() == 0:
        _print_table(args, total, rows)
    destroy_parallel()


def _print_table(args, total, rows):
    print(f"\nweight sync, TP={args.tp}, {args.layers} layers, hidden {args.hidden}, ffn {args.ffn}, "
          f"vocab {args.vocab}, {args.dtype}: {total / 2**20:.0f} MiB of HF tensors, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'path':<24}{'time s':>10}{'GB/s':>10}{'x memcpy':>10}")
    base = rows[0][1]
    for name, seconds in rows:
        print(f"{name:<24}{seconds:>10.3f}{total / seconds / 1e9:>10.2f}{seconds / base:>10.1f}")


def _spawned(rank, args, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(args.tp))
    _run(args)


def main():
    args = parse_args()
    if "WORLD_SIZE" in os.environ:  # under torchrun
        _run(args)
        return
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_spawned, args=(args, port), nprocs=args.tp, join=True)


if __name__ == "__main__":
    main()
