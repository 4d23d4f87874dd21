"""Triton fused forward (and the GPU paths) vs the naive reference.

On CPU the kernel runs under the Triton interpreter in a subprocess, because TRITON_INTERPRET
must be set before `triton.jit` wraps the kernel. Needs `pip install triton` (a test dependency).
"""
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prime_megatron.kernels import compute_fused_token_logprobs
from prime_megatron.kernels.naive import compute_naive_token_logprobs

REPO = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="pip install triton")


def _compare(impl, n, h, v, dtype, device, with_entropy, chunk_size=512):
    """Max |error| of values and relative |error| of grads vs fp64 naive, and the bf16 logit bound."""
    gen = torch.Generator().manual_seed(n)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * 3 / math.sqrt(h)
    targets = torch.randint(0, v, (n,), generator=gen)
    upstream = torch.randn(2, n, generator=gen, dtype=torch.float64)
    results = []
    for run_impl, run_dtype in ((impl, dtype), ("naive", torch.float64)):
        hd = hidden.to(dtype).to(run_dtype).to(device).requires_grad_()  # same rounded numbers on both sides
        wd = weight.to(dtype).to(run_dtype).to(device).requires_grad_()
        if run_impl == "naive":
            out = compute_naive_token_logprobs(hd, wd, targets.to(device), with_entropy=with_entropy)
        else:
            out = compute_fused_token_logprobs(
                hd, wd, targets.to(device), tp_group=None, impl=run_impl, with_entropy=with_entropy,
                chunk_size=chunk_size,
            )
        outs = out if with_entropy else (out,)
        sum(o.double() @ g.to(device) for o, g in zip(outs, upstream)).backward()
        results.append([o.detach().double().cpu() for o in outs] + [hd.grad.double().cpu(), wd.grad.double().cpu()])
    got, want = results
    errors = [(g - w).abs().max().item() / (1.0 if i < len(got) - 2 else w.abs().max().item())
              for i, (g, w) in enumerate(zip(got, want))]
    max_logit = (hidden.to(dtype).double() @ weight.to(dtype).double().t()).abs().max().item()
    return errors, max_logit


def interpreter_check():
    """Run under TRITON_INTERPRET=1: the fused kernel's values and grads vs fp64 naive on CPU."""
    # 37 tokens x 101 vocabulary with 16-wide tiles: ragged row and column tiles, two vocab splits
    # forward, five backward slices 21 wide (chunk_size 8).
    errors, _ = _compare("triton", 37, 40, 101, torch.float32, "cpu", with_entropy=True, chunk_size=8)
    # fp32 tiles and fp32 statistics: ~sqrt(H)=6 roundings of logits <~10 at eps32 = 1.2e-7,
    # i.e. ~1e-5; grads (relative) likewise. 1e-4 leaves margin for the log-sum-exp.
    assert max(errors) < 1e-4, errors
    errors, _ = _compare("triton", 20, 32, 64, torch.float32, "cpu", with_entropy=False, chunk_size=5)
    assert max(errors) < 1e-4, errors
    print("interpreter ok", errors)


@needs_triton
def test_triton_kernel_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    code = "from tests.kernels.test_triton_logprob import interpreter_check; interpreter_check()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _gpu_impls():
    from prime_megatron.kernels.te_logprob import te_unavailable_reason
    from prime_megatron.kernels.triton_logprob import triton_unavailable_reason

    impls = ["chunked"]
    impls += ["triton"] if triton_unavailable_reason(torch.device("cuda")) is None else []
    impls += ["te"] if te_unavailable_reason(torch.device("cuda")) is None else []
    return impls


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_paths_match_naive_in_bf16():
    for impl in _gpu_impls():
        with_entropy = impl != "te"
        errors, max_logit = _compare(impl, 1000, 256, 5003, torch.bfloat16, "cuda", with_entropy, chunk_size=300)
        # Logits rounded to bf16 (2^-9 relative, dl absolute) move log p by <= 2 dl and entropy by
        # <= dl * sum_v p|log p + H| <= 2 dl log V (x2 margin); softmax grads move by 2 dl relative,
        # plus three bf16 roundings of the gradients. The Triton forward keeps fp32 logits, so it
        # is only closer.
        dl = 2.0**-9 * max_logit
        value_errors, grad_errors = errors[:-2], errors[-2:]
        assert max(value_errors) <= 4 * dl * math.log(5003), (impl, errors)
        assert max(grad_errors) <= 2 * dl + 3 * 2.0**-9, (impl, errors)
