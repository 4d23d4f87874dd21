"""PRIME against outcome-only RLOO on the tiny example: same SFT start, seeds and budget.

    python benchmarks/prime_vs_rloo.py --seeds 1 2 3 --jobs 2

Runs `prime-megatron train` for each (algorithm, seed) from the shared SFT checkpoint
(made first if missing), then writes docs/prime_vs_rloo.md (mean +- std of held-out
accuracy per evaluation step) and docs/prime_vs_rloo.png from the runs' metrics.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prime_megatron.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "prime_megatron.cli"]


def run_one(config: str, algorithm: str, seed: int, out: Path, overrides: list[str]) -> Path:
    run_dir = out / f"{algorithm}_seed{seed}"
    log = run_dir / "metrics.jsonl"
    total = load_config(config, overrides).trainer.total_steps
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file() and latest.read_text().strip() == f"step_{total:08d}":
        return log  # finished earlier: reuse it
    if log.is_file():
        log.unlink()  # an unfinished attempt: start over
    args = [*CLI, "train", "--config", config, f"algorithm={algorithm}", f"trainer.seed={seed}",
            f"data.shuffle_seed={seed}", f"checkpoint.dir={run_dir}/checkpoints",
            f"logging.tensorboard_dir={run_dir}", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with open(out / f"{algorithm}_seed{seed}.log", "w") as handle:
        subprocess.run(args, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return log


def accuracy_curve(log: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}


def write_report(curves: dict[str, list[dict[int, float]]], out_md: Path, seeds: list[int]) -> None:
    steps = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    lines = ["| step | " + " | ".join(f"{a} (mean ± std, {len(seeds)} seeds)" for a in curves) + " |",
             "|---|" + "---|" * len(curves)]
    for step in steps:
        cells = []
        for runs in curves.values():
            values = [c[step] for c in runs]
            cells.append(f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    out_md.write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algorithm, runs in curves.items():
        means = [statistics.mean(c[s] for c in runs) for s in steps]
        stds = [statistics.pstdev([c[s] for c in runs]) for s in steps]
        ax.plot(steps, means, marker="o", label=algorithm)
        ax.fill_between(steps, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)], alpha=0.2)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title(f"tiny arithmetic, {len(seeds)} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_md.with_suffix(".png"), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="examples/tiny_cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--algorithms", nargs="+", default=["prime", "rloo"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="runs/prime_vs_rloo")
    parser.add_argument("--report", default="docs/prime_vs_rloo.md")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run")
    args = parser.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    if not (ROOT / "runs/tiny/sft/metadata.json").is_file():
        subprocess.run([*CLI, "sft", "--config", args.config], check=True, cwd=ROOT)
    jobs = [(a, s) for s in args.seeds for a in args.algorithms]
    with ThreadPoolExecutor(args.jobs) as pool:
        logs = list(pool.map(lambda job: run_one(args.config, *job, out, args.overrides), jobs))
    curves = {a: [accuracy_curve(log) for (alg, _), log in zip(jobs, logs) if alg == a] for a in args.algorithms}
    write_report(curves, ROOT / args.report, args.seeds)
    print((ROOT / args.report).read_text())


if __name__ == "__main__":
    main()
