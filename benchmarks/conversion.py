"""Conversion throughput and peak host memory, next to a plain copy of the same bytes.

    python benchmarks/conversion.py [--hidden 1024 --layers 8 --vocab 32000 --dtype bf16] [--tp 2 --pp 2]

Builds a random Qwen2-shaped safetensors checkpoint of a few hundred MB in a temp dir, then
runs, each in a fresh process: a plain `shutil.copytree` of the HF dir (also with fsync, as
megatron's checkpoint writer does), HF -> megatron at the given tp/pp, and megatron -> HF. Per run it prints wall time, throughput (model bytes / s),
the ratio to the copy, and peak memory against the model size:
- peak RSS (ru_maxrss, this process) and of the largest child (the checkpoint writer forks);
- growth of anonymous RSS over its pre-operation level (RssAnon sampled every 10 ms, so peaks
  shorter than that can be missed): memory the kernel cannot just drop. RSS also counts clean
  file pages mapped from the scratch copy and the inputs, which are reclaimable.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def _make_hf_model(root: Path, args) -> int:
    from transformers import Qwen2Config

    from prime_megatron.checkpoint.hf_io import write_safetensors_shards
    from prime_megatron.checkpoint.hf_mapping import hf_param_shapes
    from prime_megatron.models.arch import load_arch

    heads = args.hidden // 64
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=max(heads // 8, args.tp),
                         tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"])
    root.mkdir(parents=True)
    config.to_json_file(root / "config.json")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    specs = [(n, s, dtype) for n, s in hf_param_shapes(load_arch(root)).items()]
    gen = torch.Generator().manual_seed(0)
    tensors = ((n, (0.02 * torch.randn(s, generator=gen)).to(dtype)) for n, s, _ in specs)
    write_safetensors_shards(root, specs, tensors, max_shard_bytes=100 << 20, progress=False)
    return sum(f.stat().st_size for f in root.glob("*.safetensors"))


class _AnonPeak:
    """Samples this process's RssAnon (kB) in a thread."""

    def __init__(self):
        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self.read())
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _measure(op: str, src: str, dst: str, tp: int, pp: int) -> None:
    """Child-process entry: run one operation, print a JSON line of its cost."""
    from prime_megatron.checkpoint.convert import convert_hf_to_megatron, convert_megatron_to_hf

    import megatron.core.dist_checkpointing  # noqa: F401  (imports are not conversion time)

    startup = 0.0
    if op == "hf_to_megatron":
        # megatron's writer sends results through a spawn-context Manager started once per
        # process; the new process imports torch (~10 s here under load). Reported on its own:
        # it does not grow with the model.
        from megatron.core.dist_checkpointing.strategies.filesystem_async import _get_write_results_queue

        start = time.perf_counter()
        _get_write_results_queue()
        startup = time.perf_counter() - start
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base_anon_kb = _AnonPeak.read()
    with _AnonPeak() as anon:
        start = time.perf_counter()
        if op == "copy":
            shutil.copytree(src, dst)
        elif op == "copy+fsync":  # the checkpoint writer fsyncs its files; so does this baseline
            shutil.copytree(src, dst)
            for path in Path(dst).iterdir():
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
        elif op == "hf_to_megatron":
            convert_hf_to_megatron(src, dst, tp=tp, pp=pp, progress=False)
        else:
            convert_megatron_to_hf(src, dst, progress=False)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "startup": startup,
                      "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "child_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                      "anon_kb": anon.peak_kb - base_anon_kb, "base_rss_kb": base_kb}))


def _run(op: str, src: Path, dst: Path, tp: int, pp: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", op, str(src), str(dst), str(tp), str(pp)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{op} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        op, src, dst, tp, pp = args.measure
        return _measure(op, src, dst, int(tp), int(pp))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        size = _make_hf_model(root / "hf", args)
        runs = [("copy", root / "hf", root / "copy"), ("copy+fsync", root / "hf", root / "copy_fsync"),
                (f"hf_to_megatron tp={args.tp} pp={args.pp}", root / "hf", root / "meg"),
                ("megatron_to_hf", root / "meg", root / "hf_back")]
        results = [(name, _run(name.split()[0], src, dst, args.tp, args.pp)) for name, src, dst in runs]
    copy_s = results[0][1]["seconds"]
    print(f"model: {size / 1e6:.0f} MB of safetensors ({args.dtype}, hidden {args.hidden}, {args.layers} layers, "
          f"vocab {args.vocab}); host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'operation':<26}{'s':>7}{'GB/s':>7}{'vs copy':>9}{'+startup s':>12}{'peak RSS MB':>13}"
          f"{'child RSS MB':>14}{'anon growth MB':>16}{'/model':>8}")
    for name, r in results:
        anon = r["anon_kb"] * 1024
        print(f"{name:<26}{r['seconds']:>7.2f}{size / r['seconds'] / 1e9:>7.2f}{copy_s / r['seconds']:>9.2f}"
              f"{r['startup']:>12.2f}{r['rss_kb'] / 1e3:>13.0f}{r['child_rss_kb'] / 1e3:>14.0f}"
              f"{anon / 1e6:>16.0f}{anon / size:>8.2f}")
    print(f"peak RSS includes ~{results[1][1]['base_rss_kb'] / 1e3:.0f} MB of interpreter + torch/megatron before the "
          "operation, and clean file pages of mapped scratch/input files (reclaimable). 'anon growth' is the peak "
          "anonymous memory above the pre-operation level: what the conversion itself holds.")

if __name__ == "__main__":  # the checkpoint writer forks workers
    main()
