"""Policy-step throughput and peak memory: forward + backward + optimizer step, TP side by side.

    python benchmarks/policy_step.py                       # CPU: small model, tp=1 and tp=2
    python benchmarks/policy_step.py --preset qwen2.5-0.5b --tp 1 --batch 8 --prompt 512 --response 1536
                                                           # GPU (one H100): ~0.5B model in bf16

For each tp the script re-launches itself under torchrun (tp processes, gloo on CPU, nccl on
GPU), runs `train_on_batch` (megatron DDP + DistributedOptimizer, the PPO-shaped token-mean
loss through the chunked vocab-parallel log-probs) on a random batch of variable-length
responses, and prints one table with the tp=1 run as the baseline of the ratios.

tokens/s counts real (non-padding) prompt + response tokens per second, over all ranks.
Peak memory: on GPU torch.cuda.max_memory_allocated (max over ranks); on CPU the peak
resident set size of a rank (ru_maxrss, max over ranks) minus its size before the model was
built, i.e. weights + optimizer state + activations of one step. Each rank is one process
with OMP_NUM_THREADS=1 (one core standing in for one device), so tp=2 also uses two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

PRESETS = {
    # Small enough for 2 CPU cores; vocab large enough that the log-prob path matters.
    "cpu-small": dict(architectures=["Qwen2ForCausalLM"], vocab_size=8192, hidden_size=256, intermediate_size=704,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=4096),
    # Qwen2.5-0.5B's shape (random weights; the speed does not depend on them).
    "qwen2.5-0.5b": dict(architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
                         intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         max_position_embeddings=32768),
}


def _parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, default=192, help="max response length (lengths vary)")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _make_batch(args, vocab_size):
    import torch

    from prime_megatron.update.batch import SequenceBatch

    gen = torch.Generator().manual_seed(0)
    responses = torch.randint(args.response // 4, args.response + 1, (args.batch,), generator=gen)
    prompts = torch.full((args.batch,), args.prompt)
    ids = torch.randint(0, vocab_size, (args.batch, args.prompt + args.response), generator=gen)
    return SequenceBatch(ids, prompts, responses)


def _worker(args):
    import torch

    from prime_megatron.models.arch import load_arch
    from prime_megatron.models.builder import build_model
    from prime_megatron.parallel import destroy_parallel, init_parallel
    from prime_megatron.update.forward_backward import train_on_batch
    from prime_megatron.update.optimizer import build_optimizer, wrap_ddp

    import megatron.core.distributed  # noqa: F401  imported before the baseline RSS is taken
    import megatron.core.models.gpt  # noqa: F401
    import megatron.core.optimizer  # noqa: F401

    tp = int(os.environ["WORLD_SIZE"])
    parallel = init_parallel(tp=tp)
    on_gpu = torch.cuda.is_available()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    arch = load_arch(PRESETS[args.preset])
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = wrap_ddp(build_model(arch, parallel=parallel, params_dtype=dtype), parallel=parallel)
    optimizer = build_optimizer(model, lr=1e-6, parallel=parallel, bf16=on_gpu)
    batch = _make_batch(args, arch.vocab_size)
    mask = batch.response_mask()

    def loss_fn(logprobs, entropy, index):  # token-mean over the whole batch, PPO-shaped
        m = mask[index].to(logprobs.device)
        return -(logprobs * m).sum() / mask.sum(), {}

    def step():
        train_on_batch(model, optimizer, batch, loss_fn, parallel=parallel, micro_batch_size=args.micro_batch_size)
        if on_gpu:
            torch.cuda.synchronize()

    step()  # warm-up: allocates optimizer state and grad buffers
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = (time.perf_counter() - start) / args.steps
    peak = (torch.cuda.max_memory_allocated() if on_gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before)
    tokens = int(batch.sequence_lengths().sum())
    with open(f"{args.worker_out}.{parallel.rank}", "w") as f:
        json.dump({"step_s": elapsed, "tokens": tokens, "peak_bytes": peak}, f)
    destroy_parallel()


def _launch(args, tp, out_path):
    argv = sys.argv[1:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tp}",
           os.path.abspath(__file__), *argv, "--worker-out", out_path]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ranks = [json.load(open(f"{out_path}.{r}")) for r in range(tp)]
    return {"step_s": max(r["step_s"] for r in ranks), "tokens": ranks[0]["tokens"],
            "peak_bytes": max(r["peak_bytes"] for r in ranks)}


def main():
    args = _parse()
    if args.worker_out:
        _worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tp in args.tp:
            rows.append((tp, _launch(args, tp, os.path.join(tmp, f"tp{tp}"))))
    base = rows[0][1]
    from importlib.metadata import version

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"{device}, torch {torch.__version__}, megatron-core {version('megatron-core')}")
    print(f"policy step ({args.preset}): batch {args.batch}, prompt {args.prompt}, response <= {args.response}, "
          f"micro-batch {args.micro_batch_size}, {args.steps} timed steps")
    print(f"{'tp':>3} {'step ms':>9} {'tokens/s':>10} {'peak MiB':>9} {'speed vs tp' + str(rows[0][0]):>14} "
          f"{'peak vs tp' + str(rows[0][0]):>13}")
    for tp, r in rows:
        tps = r["tokens"] / r["step_s"]
        print(f"{tp:>3} {r['step_s'] * 1e3:>9.1f} {tps:>10.0f} {r['peak_bytes'] / 2**20:>9.1f} "
              f"{base['step_s'] / r['step_s']:>14.2f} {r['peak_bytes'] / base['peak_bytes']:>13.2f}")


if __name__ == "__main__":
    main()
