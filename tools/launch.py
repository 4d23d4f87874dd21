#!/usr/bin/env python
"""Launch the trainer with nemo-run, on Slurm or on this machine.

    python tools/launch.py --config examples/prime_qwen25_math_7b.yaml --executor slurm \
        --nodes 1 --nproc-per-node 8 --account ACC --partition PART --dryrun
    python tools/launch.py --config examples/tiny_cpu.yaml --executor local --nproc-per-node 2
    python tools/launch.py --config examples/prime_70b.yaml --executor slurm --nodes 16 \
        --ssh-host login.cluster --ssh-user me --job-dir /scratch/me/nemo_run \
        --workdir /scratch/me/prime-megatron --container-image nvcr.io/nvidia/pytorch:25.01-py3

--dryrun prints the sbatch script (or local command) without submitting. Trailing a.b=value
arguments are config overrides. The experiment definitions are prime_megatron/launch.py;
the sbatch scripts in slurm/ are the nemo-run-free way to the same run.
"""
from __future__ import annotations

import argparse
import sys

from prime_megatron.launch import (REPO_ROOT, SlurmSpec, build_local_executor, build_slurm_executor,
                                   build_train_task, run_experiment)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    ap.add_argument("--name", default="prime")
    ap.add_argument("--dryrun", action="store_true", help="print what would be submitted, submit nothing")
    ap.add_argument("--no-resume", action="store_true", help="do not pass --resume to the trainer")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--nproc-per-node", type=int, default=8, help="torchrun workers per node")
    ap.add_argument("--gpus-per-node", type=int, default=None, help="default: --nproc-per-node; 0 for CPU")
    ap.add_argument("--cpus-per-task", type=int)
    ap.add_argument("--account", default="")
    ap.add_argument("--partition")
    ap.add_argument("--time", default="04:00:00")
    ap.add_argument("--signal-s", type=int, default=600, help="USR1 (checkpoint) this long before the time limit")
    ap.add_argument("--container-image")
    ap.add_argument("--workdir", default=REPO_ROOT, help="repository checkout where the trainer runs")
    ap.add_argument("--ssh-host")
    ap.add_argument("--ssh-user")
    ap.add_argument("--job-dir", default="", help="with --ssh-host: remote dir for sbatch scripts and logs")
    ap.add_argument("overrides", nargs="*", help="config overrides a.b=value")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    task = build_train_task(args.config, args.overrides, resume=not args.no_resume)
    if args.executor == "local":
        executor = build_local_executor(nproc_per_node=args.nproc_per_node)
    else:
        gpus = args.nproc_per_node if args.gpus_per_node is None else (args.gpus_per_node or None)
        executor = build_slurm_executor(SlurmSpec(
            nodes=args.nodes, nproc_per_node=args.nproc_per_node, gpus_per_node=gpus,
            cpus_per_task=args.cpus_per_task, account=args.account, partition=args.partition,
            time=args.time, signal_s=args.signal_s, container_image=args.container_image,
            workdir=args.workdir, ssh_host=args.ssh_host, ssh_user=args.ssh_user, job_dir=args.job_dir))
    result = run_experiment(task, executor, name=args.name, dryrun=args.dryrun, workdir=args.workdir)
    if result is None:
        return 0
    print(f"{args.name}: {result['status']} (job {result['job_id']}, logs in {result['local_dir']})")
    return 0 if result["status"] == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
