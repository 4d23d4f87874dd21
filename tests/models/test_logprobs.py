"""compute_token_logprobs against a dense torch.log_softmax reference, on 1 and 2 tp ranks.

The reference is the obvious computation in float64: log_softmax over the real vocabulary
(padding rows dropped), entropy -sum p log p, gradients by autograd. The function under test
computes in float32, so values are compared at float32 precision.
"""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from prime_megatron.models.logprobs import compute_token_logprobs
from tests.distributed import run_distributed

N, V_PADDED, V_REAL = 53, 64, 60


def _inputs(seed=0, n=N, v=V_PADDED, v_real=V_REAL):
    gen = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, v, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, v_real, (n,), generator=gen)
    upstream = torch.randn(2, n, generator=gen, dtype=torch.float64)
    return logits, targets, upstream


def _dense(logits, targets, upstream, v_real, temperature=1.0):
    x = logits.clone().requires_grad_()
    logp = torch.log_softmax(x[:, :v_real] / temperature, dim=-1)
    lp = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    ent = -(logp.exp() * logp).sum(-1)
    (upstream[0] * lp + upstream[1] * ent).sum().backward()
    return lp.detach(), ent.detach(), x.grad


def _ours(logits, targets, upstream, **kwargs):
    x = logits.clone().requires_grad_()
    lp, ent = compute_token_logprobs(x, targets, with_entropy=True, **kwargs)
    (upstream[0] * lp + upstream[1] * ent).sum().backward()
    return lp.detach(), ent.detach(), x.grad


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_dense_log_softmax(chunk_size, temperature):
    logits, targets, upstream = _inputs()
    ref = _dense(logits, targets, upstream, V_REAL, temperature)
    got = _ours(logits, targets, upstream, chunk_size=chunk_size, vocab_size=V_REAL, temperature=temperature)
    # float32 arithmetic on logits of magnitude ~10 (3 sigma / 0.6): absolute error a few 1e-6.
    for name, a, b in zip(("logprobs", "entropy", "grad"), got, ref):
        assert torch.allclose(a.double(), b, atol=2e-5, rtol=0), name
    assert (got[2][:, V_REAL:] == 0).all()  # padding rows get no gradient


def test_chunked_equals_unchunked_and_input_untouched():
    logits, targets, upstream = _inputs(seed=1)
    kept = logits.clone()
    whole = _ours(logits, targets, upstream, vocab_size=V_REAL)
    chunked = _ours(logits, targets, upstream, chunk_size=5, vocab_size=V_REAL)
    # Every token's reductions run over its own vocabulary row whatever the chunking.
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)
    assert torch.equal(logits, kept)


def test_leading_dims_and_bad_input():
    logits, targets, _ = _inputs(seed=2, n=12)
    flat = compute_token_logprobs(logits, targets, vocab_size=V_REAL)
    shaped = compute_token_logprobs(logits.view(3, 4, -1), targets.view(3, 4), vocab_size=V_REAL)
    assert torch.equal(shaped.view(-1), flat)
    # A sequence slice of [B, S, V] cannot be flattened without a copy: it is scored per row.
    sliced = compute_token_logprobs(logits.view(3, 4, -1)[:, 1:], targets.view(3, 4)[:, 1:], vocab_size=V_REAL)
    assert torch.equal(sliced, flat.view(3, 4)[:, 1:])
    with pytest.raises(ValueError, match="targets shape"):
        compute_token_logprobs(logits, targets[:5])
    with pytest.raises(ValueError, match=r"target ids must lie in \[0, 60\)"):
        compute_token_logprobs(logits, torch.full_like(targets, 61), vocab_size=V_REAL)
    with pytest.raises(ValueError, match="chunk_size"):
        compute_token_logprobs(logits, targets, chunk_size=0)


def _peak_extra_bytes(n_tokens, vocab, chunk_size):
    """High-water mark of CPU allocations during forward+backward, above what existed before."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n_tokens, vocab, generator=gen).requires_grad_()
    targets = torch.randint(0, vocab, (n_tokens,), generator=gen)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        lp, ent = compute_token_logprobs(logits, targets, chunk_size=chunk_size, with_entropy=True)
        (lp.sum() + ent.sum()).backward()
        del lp, ent
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def test_peak_memory_grows_with_chunk_not_with_tokens():
    vocab, chunk = 512, 64
    for n_tokens in (1024, 4096):
        peak = _peak_extra_bytes(n_tokens, vocab, chunk)
        grad_bytes = n_tokens * vocab * 4  # the logits' own gradient, returned to the caller
        # Derived bound: two float32 [chunk, V] buffers (the chunk's logits copy and its softmax)
        # + per-token float32 vectors (logprob, entropy, log Z, E[x], their upstream grads and
        # the int64 target index: well under 64 bytes/token) + the logits gradient.
        bound = grad_bytes + 2 * chunk * vocab * 4 + 64 * n_tokens
        assert peak <= bound, (n_tokens, peak, bound)
    # Unchunked, the same two buffers are [tokens, V]: the peak then scales with the tokens.
    whole = _peak_extra_bytes(4096, vocab, None)
    assert whole >= 4096 * vocab * 4 + 2 * 4096 * vocab * 4


def _tp_worker(rank, world_size, chunk_size):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    logits, targets, upstream = _inputs(seed=4)
    shard = logits.chunk(world_size, dim=-1)[rank]
    lp, ent, grad = _ours(shard, targets, upstream, chunk_size=chunk_size, vocab_size=V_REAL, tp_group=None)
    # numpy, not tensors: torch pickles tensors through shared memory that dies with this process.
    return lp.numpy(), ent.numpy(), grad.numpy()


def test_two_tp_ranks_match_dense():
    logits, targets, upstream = _inputs(seed=4)
    ref_lp, ref_ent, ref_grad = _dense(logits, targets, upstream, V_REAL)
    # Targets fall in both halves of the vocabulary, and rank 1 holds the 4 padding rows.
    assert (targets < V_PADDED // 2).any() and (targets >= V_PADDED // 2).any()
    results = run_distributed(_tp_worker, world_size=2, args=(6,), timeout_s=180)
    for rank, arrays in enumerate(results):
        lp, ent, grad = (torch.from_numpy(a) for a in arrays)
        # Same float32 precision argument as the single-rank test; the all-reduces only change
        # the summation order.
        assert torch.allclose(lp.double(), ref_lp, atol=2e-5, rtol=0)
        assert torch.allclose(ent.double(), ref_ent, atol=2e-5, rtol=0)
        assert torch.allclose(grad, ref_grad.chunk(2, dim=-1)[rank], atol=2e-5, rtol=0)
