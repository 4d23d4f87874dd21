"""Time and peak memory of the per-token log-prob paths against the bare output-layer matmul.

    python benchmarks/logprob.py            # GPU: hidden 3584, vocab 152064, 4k and 16k tokens, bf16
    python benchmarks/logprob.py --small    # CPU-sized: hidden 256, vocab 8192, 512 and 2048 tokens, fp32

Rows, all on one device in one run (TP=1):
- bare:    logits = hidden @ W^T only; its backward is the two matmuls any path needs
           (grad_hidden = G W, grad_W = G^T hidden). The floor for time.
- naive:   full logits, fp32 upcast, log_softmax, gather (prime_megatron.kernels.naive).
- chunked / triton / te: `compute_fused_token_logprobs(impl=...)`; unavailable ones are listed
           with the reason.
Columns: forward without graph (reference / old-policy passes), backward (after a forward with
graph), ratios to bare, and peak memory above the inputs, the weight and the gradients every
path returns ("extra"), for the training step (forward with graph + backward), with its ratio to
naive. GPU memory comes from the CUDA caching allocator; CPU memory from the profiler's
allocation events.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from prime_megatron.kernels import DEFAULT_CHUNK_SIZE, compute_fused_token_logprobs
from prime_megatron.kernels.naive import compute_naive_token_logprobs
from prime_megatron.kernels.te_logprob import te_unavailable_reason
from prime_megatron.kernels.triton_logprob import triton_unavailable_reason

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU-sized defaults: hidden 256, vocab 8192, tokens 512 2048")
    p.add_argument("--hidden", type=int, help="default 3584")
    p.add_argument("--vocab", type=int, help="default 152064")
    p.add_argument("--tokens", type=int, nargs="+", help="default 4096 16384")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--impls", nargs="+", default=["bare", "naive", "chunked", "triton", "te"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    defaults = (256, 8192, [512, 2048]) if args.small else (3584, 152064, [4096, 16384])
    args.hidden, args.vocab, args.tokens = (
        given if given is not None else default
        for given, default in zip((args.hidden, args.vocab, args.tokens), defaults)
    )
    return args


def _forward(impl, hidden, weight, targets, chunk_size):
    if impl == "bare":
        return hidden @ weight.t()
    if impl == "naive":
        return compute_naive_token_logprobs(hidden, weight, targets)
    return compute_fused_token_logprobs(hidden, weight, targets, tp_group=None, impl=impl, chunk_size=chunk_size)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(setup, measured, device, repeats):
    """Best wall time (ms) of measured(setup()) over `repeats` runs after a warm-up; setup untimed.
    The minimum, not the median: background load only ever adds time."""
    times = []
    for i in range(repeats + 1):
        state = setup()
        _sync(device)
        start = time.perf_counter()
        measured(state)
        _sync(device)
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def _time_impl(impl, hidden, weight, targets, chunk_size, repeats):
    """(forward ms without graph, backward ms after a forward with graph)."""
    h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()

    def forward_only(_):
        with torch.no_grad():
            _forward(impl, hidden, weight, targets, chunk_size)

    def forward_with_graph():
        h.grad = w.grad = None
        out = _forward(impl, h, w, targets, chunk_size)
        return out, torch.ones_like(out)

    device = hidden.device
    return (
        _timed(lambda: None, forward_only, device, repeats),
        _timed(forward_with_graph, lambda state: state[0].backward(state[1]), device, repeats),
    )


def _train_step(impl, hidden, weight, targets, chunk_size):
    h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    out = _forward(impl, h, w, targets, chunk_size)
    out.backward(torch.ones_like(out))
    return h.grad.nbytes + w.grad.nbytes


def _peak_extra_bytes(impl, hidden, weight, targets, chunk_size):
    """Peak bytes allocated during one training step, minus the gradients it returns."""
    if hidden.device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        grad_bytes = _train_step(impl, hidden, weight, targets, chunk_size)
        return torch.cuda.max_memory_allocated() - base - grad_bytes
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        grad_bytes = _train_step(impl, hidden, weight, targets, chunk_size)
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak - grad_bytes


def _unavailable(impl, device):
    if impl == "triton":
        return triton_unavailable_reason(device)
    if impl == "te":
        return te_unavailable_reason(device)
    return None


def _inputs(tokens, args, device, dtype):
    gen = torch.Generator(device=device).manual_seed(tokens)
    hidden = torch.randn(tokens, args.hidden, generator=gen, device=device, dtype=dtype)
    weight = torch.randn(args.vocab, args.hidden, generator=gen, device=device, dtype=dtype) / args.hidden**0.5
    targets = torch.randint(0, args.vocab, (tokens,), generator=gen, device=device)
    return hidden, weight, targets


def _measure(args, tokens, device, dtype):
    inputs = _inputs(tokens, args, device, dtype)
    rows = {}
    for impl in args.impls:
        reason = _unavailable(impl, device)
        if reason is not None:
            print(f"  skipped {impl}: {reason}")
            continue
        fwd_ms, bwd_ms = _time_impl(impl, *inputs, args.chunk_size, args.repeats)
        rows[impl] = (fwd_ms, bwd_ms, _peak_extra_bytes(impl, *inputs, args.chunk_size))
    return rows


def _ratio(value, base):
    return f"{value / base:7.2f}x" if base else "      -"


def _print_table(rows):
    bare, naive = rows.get("bare"), rows.get("naive")
    print(f"  {'impl':8} {'fwd ms':>9} {'/bare':>8} {'bwd ms':>9} {'/bare':>8} {'extra MiB':>10} {'/naive':>8}")
    for impl, (fwd, bwd, extra) in rows.items():
        print(
            f"  {impl:8} {fwd:9.2f} {_ratio(fwd, bare and bare[0])} {bwd:9.2f} {_ratio(bwd, bare and bare[1])}"
            f" {extra / 2**20:10.1f} {_ratio(extra, naive and naive[2])}"
        )


def main():
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; torch {torch.__version__}; hidden {args.hidden}, vocab {args.vocab}, {dtype}, "
          f"chunk_size {args.chunk_size}, best of {args.repeats}")
    for tokens in args.tokens:
        print(f"tokens {tokens}:")
        _print_table(_measure(args, tokens, device, dtype))


if __name__ == "__main__":
    main()
