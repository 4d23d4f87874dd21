#!/usr/bin/env python
"""Print the per-GPU memory arithmetic of a PRIME run and the tp/pp/dp layouts that fit.

    python tools/plan.py --model qwen2.5-math-7b --config examples/prime_qwen25_math_7b.yaml \
        --script slurm/prime_7b.sh
    python tools/plan.py --model llama3-70b --config examples/prime_70b.yaml --nodes 8 --gpus-per-node 8

--model is a preset (qwen2.5-math-7b, qwen2.5-32b, llama3-70b) or an HF model dir/config.json.
The cluster comes from the sbatch script's header or from --nodes/--gpus-per-node.
Exits 1 when the layout in the config does not fit. The logic is prime_megatron/plan.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from prime_megatron.config import load_config
from prime_megatron.plan import (ClusterSpec, Layout, PRESETS, Workload, compute_memory_plan,
                                 format_plan, propose_layouts, read_sbatch_resources, resolve_model)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help=f"preset {sorted(PRESETS)} or HF model dir / config.json")
    ap.add_argument("--config", help="experiment YAML (workload, tp/pp); default: config defaults")
    ap.add_argument("--script", help="sbatch script whose header gives --nodes and --gpus-per-node")
    ap.add_argument("--nodes", type=int)
    ap.add_argument("--gpus-per-node", type=int)
    ap.add_argument("--gpu-mem-gib", type=float, default=80.0, help="memory of one GPU (default 80)")
    ap.add_argument("--recompute", choices=["none", "full"], default="none")
    ap.add_argument("--grad-reduce-in-fp32", action="store_true")
    ap.add_argument("--top", type=int, default=3, help="how many proposed layouts to print")
    ap.add_argument("overrides", nargs="*", help="config overrides a.b=value")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    nodes, gpus = read_sbatch_resources(args.script) if args.script else (None, None)
    nodes, gpus = args.nodes or nodes, args.gpus_per_node or gpus
    if not nodes or not gpus:
        sys.exit("plan.py: give --script, or both --nodes and --gpus-per-node")
    cluster = ClusterSpec(gpu_mem_gib=args.gpu_mem_gib, gpus_per_node=gpus, nodes=nodes)
    arch = resolve_model(args.model)
    work = Workload.from_config(cfg, recompute=args.recompute, grad_reduce_in_fp32=args.grad_reduce_in_fp32)
    print(f"model {args.model}: {arch.num_layers} layers, hidden {arch.hidden_size}; cluster "
          f"{nodes} x {gpus} GPUs of {args.gpu_mem_gib} GiB\nworkload {dataclasses.asdict(work)}\n")
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    configured = compute_memory_plan(arch, cluster, work, Layout(tp, pp, cluster.world_size // (tp * pp)))
    print("configured " + format_plan(configured) + "\n")
    proposals = [p for p in propose_layouts(arch, cluster, work) if p.fits]
    if not proposals:
        print("no tp/pp/dp layout fits this cluster")
    for rank, plan in enumerate(proposals[: args.top], 1):
        print(f"proposal {rank}: " + format_plan(plan) + "\n")
    return 0 if configured.fits else 1


if __name__ == "__main__":
    sys.exit(main())
