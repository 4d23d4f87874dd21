"""Chunked vocab-parallel log-probs vs the naive full-logits reference (single process)."""
import math

import pytest
import torch

from prime_megatron.kernels import compute_fused_token_logprobs
from prime_megatron.kernels.naive import compute_naive_token_logprobs

N, H, V = 37, 24, 101  # ragged against every chunk width used below


def _inputs(dtype, seed=0, n=N, h=H, v=V, logit_scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * logit_scale / math.sqrt(h)
    targets = torch.randint(0, v, (n,), generator=gen)
    upstream = torch.randn(2, n, generator=gen, dtype=torch.float64)  # arbitrary dL/dlogp, dL/dH
    return hidden.to(dtype), weight.to(dtype), targets, upstream


def _run(fn, hidden, weight, targets, upstream, with_entropy):
    """Values and (hidden, weight) grads of sum(g1 * logp + g2 * entropy)."""
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    out = fn(hidden, weight, targets, with_entropy)
    logp, entropy = out if with_entropy else (out, None)
    loss = (logp * upstream[0].to(logp.dtype)).sum()
    if with_entropy:
        loss = loss + (entropy * upstream[1].to(entropy.dtype)).sum()
    loss.backward()
    return logp.detach(), None if entropy is None else entropy.detach(), hidden.grad, weight.grad


def _chunked(chunk_size):
    return lambda h, w, y, ent: compute_fused_token_logprobs(
        h, w, y, tp_group=None, chunk_size=chunk_size, with_entropy=ent
    )


def _naive(h, w, y, ent):
    return compute_naive_token_logprobs(h, w, y, with_entropy=ent)


def _as_fp64(hidden, weight, targets, upstream):
    return hidden.double(), weight.double(), targets, upstream


def test_hand_worked_two_token_vocabulary():
    # logits = hidden * weight = [0, ln 3] -> p = [1/4, 3/4]; log p(0) = ln(1/4) = -1.3863,
    # entropy = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.34657 + 0.21576 = 0.56233
    hidden = torch.tensor([[1.0]], dtype=torch.float64)
    weight = torch.tensor([[0.0], [math.log(3.0)]], dtype=torch.float64)
    logp, entropy = compute_fused_token_logprobs(hidden, weight, torch.tensor([0]), tp_group=None, with_entropy=True)
    assert logp.item() == pytest.approx(-1.3862944, abs=1e-7)
    assert entropy.item() == pytest.approx(0.5623351, abs=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])  # slice widths 2, 19 and the whole vocabulary
@pytest.mark.parametrize("with_entropy", [False, True])
def test_fp64_matches_naive(chunk_size, with_entropy):
    args = _inputs(torch.float64)
    got = _run(_chunked(chunk_size), *args, with_entropy)
    want = _run(_naive, *args, with_entropy)
    for g, w in zip(got, want):
        if w is not None:
            # fp64: both sides are exact to ~1e-15; 1e-10 only allows reassociation of sums.
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_fp32_matches_fp64_naive():
    args = _inputs(torch.float32)
    got = _run(_chunked(8), *args, True)
    want = _run(_naive, *_as_fp64(*args), True)
    max_logit = (args[0].double() @ args[1].double().t()).abs().max().item()
    # An fp32 dot product of H terms errs by ~sqrt(H) roundings (eps32/2 relative) of the largest
    # logit; softmax turns a logit error into at most twice that in log p and (relative) in the
    # gradients. x4 margin for the log-sum-exp's own roundings.
    tol = 4 * 2 * math.sqrt(H) * (torch.finfo(torch.float32).eps / 2) * max_logit
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=0, atol=tol * max(1.0, w.abs().max().item()))


def test_bf16_matches_reference_within_logit_rounding():
    hidden, weight, targets, upstream = _inputs(torch.bfloat16, seed=1)
    got = _run(_chunked(16), hidden, weight, targets, upstream, True)
    # Reference: the same bf16 numbers in fp64, so the only error left is rounding logits to bf16.
    logp, entropy, grad_h, grad_w = _run(_naive, *_as_fp64(hidden, weight, targets, upstream), True)
    logits = hidden.double() @ weight.double().t()
    dl = 2.0**-9 * logits.abs().max().item()  # bf16 round-to-nearest: relative error <= 2^-9
    # d logp / d l = onehot - p: |delta logp| <= 2 max|delta l|.
    assert (got[0].double() - logp).abs().max() <= 2 * dl
    # d H / d l_v = -p_v (log p_v + H): |delta H| <= max|delta l| * sum_v p_v |log p_v + H|, first order (x1.5).
    log_p = torch.log_softmax(logits, -1)
    spread = (log_p.exp() * (log_p + entropy.unsqueeze(1)).abs()).sum(-1).max().item()
    assert (got[1].double() - entropy).abs().max() <= 1.5 * dl * spread
    # Gradients: softmax probabilities move by <= 2 max|delta l| relative, then three bf16
    # roundings (grad-logits cast, matmul output, fp32->bf16 grad) of 2^-9 each.
    for g, w in ((got[2], grad_h), (got[3], grad_w)):
        assert (g.double() - w).abs().max() <= (2 * dl + 3 * 2.0**-9) * w.abs().max()


@pytest.mark.parametrize("trainable", ["hidden", "weight"])
def test_grad_of_one_input_only(trainable):
    # The reference model is frozen (weight needs no grad); a frozen trunk leaves hidden without one.
    hidden, weight, targets, upstream = _inputs(torch.float64, seed=2)
    tensor = (hidden if trainable == "hidden" else weight).clone().requires_grad_()
    h, w = (tensor, weight) if trainable == "hidden" else (hidden, tensor)
    (compute_fused_token_logprobs(h, w, targets, tp_group=None, chunk_size=5) * upstream[0]).sum().backward()
    expected = _run(_naive, hidden, weight, targets, upstream, False)[2 if trainable == "hidden" else 3]
    torch.testing.assert_close(tensor.grad, expected, rtol=0, atol=1e-10)  # fp64, as above


def test_leading_dims_are_kept():
    hidden, weight, targets, _ = _inputs(torch.float64, n=12)
    out = compute_fused_token_logprobs(hidden.view(3, 4, H), weight, targets.view(3, 4), tp_group=None, chunk_size=3)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.view(-1), _naive(hidden, weight, targets, False), rtol=0, atol=1e-10)


def test_backward_saves_no_logits():
    hidden, weight, targets, _ = _inputs(torch.float32, n=40, h=24, v=90)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        compute_fused_token_logprobs(
            hidden.requires_grad_(), weight.requires_grad_(), targets, tp_group=None, with_entropy=True
        )
    # hidden [40, 24], weight [90, 24], targets / lse / entropy [40]; a [40, 90] logits tensor would fail.
    assert set(saved) <= {(40, 24), (90, 24), (40,)}, saved


def test_prm_pass_gives_rewards_and_prm_loss_grads():
    """One PRM pass: its detached log-probs make the implicit rewards, its graph the PRM loss."""
    beta, label = 0.05, torch.tensor(1.0, dtype=torch.float64)
    hidden, weight, targets, _ = _inputs(torch.float64, seed=3)
    ref_weight = weight + 0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(4), dtype=weight.dtype)
    with torch.no_grad():
        ref_logp = compute_fused_token_logprobs(hidden, ref_weight, targets, tp_group=None, chunk_size=9)

    def prm_loss(fn):
        w = weight.clone().requires_grad_()
        prm_logp = fn(hidden, w, targets)
        rewards = beta * (prm_logp.detach() - ref_logp)  # PRIME eq.: r_t = beta (log pi_phi - log pi_ref)
        seq_reward = beta * (prm_logp - ref_logp).sum()
        torch.nn.functional.binary_cross_entropy_with_logits(seq_reward, label).backward()
        return rewards, w.grad

    rewards, grad = prm_loss(lambda h, w, y: compute_fused_token_logprobs(h, w, y, tp_group=None, chunk_size=9))
    with torch.no_grad():
        naive_ref = compute_naive_token_logprobs(hidden, ref_weight, targets)
    naive_rewards, naive_grad = prm_loss(lambda h, w, y: compute_naive_token_logprobs(h, w, y))
    torch.testing.assert_close(ref_logp, naive_ref, rtol=0, atol=1e-10)  # fp64, as above
    torch.testing.assert_close(rewards, naive_rewards, rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, naive_grad, rtol=0, atol=1e-10)


def test_bad_inputs_are_named():
    hidden, weight, targets, _ = _inputs(torch.float32)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 101\)"):
        compute_fused_token_logprobs(hidden, weight, targets + V, tp_group=None)
    with pytest.raises(ValueError, match="output_weight_shard must be"):
        compute_fused_token_logprobs(hidden, weight[:, :5], targets, tp_group=None)
    with pytest.raises(ValueError, match="share a dtype"):
        compute_fused_token_logprobs(hidden, weight.double(), targets, tp_group=None)
    with pytest.raises(ValueError, match="targets shape"):
        compute_fused_token_logprobs(hidden, weight, targets[:5], tp_group=None)
    with pytest.raises(ValueError, match="impl must be one of"):
        compute_fused_token_logprobs(hidden, weight, targets, tp_group=None, impl="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        compute_fused_token_logprobs(hidden, weight, targets, tp_group=None, chunk_size=0)
    with pytest.raises(ValueError, match="entropy"):
        compute_fused_token_logprobs(hidden, weight, targets, tp_group=None, impl="te", with_entropy=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
@pytest.mark.parametrize("impl", ["triton", "te"])
def test_gpu_impls_explain_what_is_missing(impl, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight, targets, _ = _inputs(torch.float32)
    with pytest.raises(RuntimeError, match=f"impl='{impl}' needs"):
        compute_fused_token_logprobs(hidden, weight, targets, tp_group=None, impl=impl)
