"""PPO clip loss, aggregation modes, KL and entropy helpers: hand-worked numbers, loop
references, padding invariance (values and gradients) and input errors."""
import math

import pytest
import torch

from prime_megatron.update.losses import (
    compute_entropy_from_logits,
    compute_entropy_loss,
    compute_kl,
    compute_masked_aggregate,
    compute_policy_loss,
    compute_policy_loss_per_token,
)
from tests.advantage.inputs import random_mask, with_garbage

RATIOS = torch.tensor([[2.0, 2.0, 0.5]])
ADV = torch.tensor([[2.0, -2.0, 2.0]])


def test_ppo_clip_hand_worked():
    # clip 0.2 -> ratios clamped to [0.8, 1.2].
    # token 0: A=2, rho=2:   max(-2*2, -2*1.2) = max(-4, -2.4) = -2.4 (clipped term active)
    # token 1: A=-2, rho=2:  max(2*2, 2*1.2) = max(4, 2.4) = 4.0
    # token 2: A=2, rho=0.5: max(-2*0.5, -2*0.8) = max(-1, -1.6) = -1.0
    logprobs, old, mask = RATIOS.log(), torch.zeros(1, 3), torch.ones(1, 3)
    per_token, flags = compute_policy_loss_per_token(logprobs, old, ADV, mask)
    torch.testing.assert_close(per_token, torch.tensor([[-2.4, 4.0, -1.0]]))
    assert flags["clipped"].tolist() == [[True, False, False]]
    # Dual clip c = 1.5 bounds the negative-advantage token: min(4, 2*1.5) = 3.0.
    per_token, flags = compute_policy_loss_per_token(logprobs, old, ADV, mask, clip_ratio_c=1.5)
    torch.testing.assert_close(per_token, torch.tensor([[-2.4, 3.0, -1.0]]))
    assert flags["dual_clipped"].tolist() == [[False, True, False]]
    # Token mean: (-2.4 + 4 - 1) / 3 = 0.2; clip fraction 1/3;
    # approx_kl = mean(old - new) = -(ln 2 + ln 2 + ln 0.5) / 3 = -ln(2) / 3 = -0.231049;
    # k3 = mean(rho - 1 - ln rho) = ((1 - 0.693147) * 2 + (-0.5 + 0.693147)) / 3 = 0.268951.
    loss, metrics = compute_policy_loss(logprobs, old, ADV, mask)
    assert loss.item() == pytest.approx(0.2, abs=1e-6)
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 3)
    assert metrics["approx_kl"].item() == pytest.approx(-math.log(2) / 3, abs=1e-6)
    assert metrics["approx_kl_k3"].item() == pytest.approx(0.268951, abs=1e-6)


def test_clip_ratio_high_hand_worked():
    # rho = 1.25, A = 1: symmetric clip 0.2 -> max(-1.25, -1.2) = -1.2 (clipped);
    # clip-higher 0.28 -> bound 1.28 > 1.25, so the unclipped -1.25 stays.
    args = (torch.tensor([[math.log(1.25)]]), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1))
    assert compute_policy_loss_per_token(*args)[0].item() == pytest.approx(-1.2)
    assert compute_policy_loss_per_token(*args, clip_ratio_high=0.28)[0].item() == pytest.approx(-1.25)


def test_loss_agg_hand_worked():
    # Per-token values [[1, 2, pad], [3, pad, pad]]:
    # token-mean (1+2+3)/3 = 2; seq-mean-token-sum (3 + 3)/2 = 3;
    # seq-mean-token-mean (1.5 + 3)/2 = 2.25; token-mean over a global count of 6 = 1.
    values = torch.tensor([[1.0, 2.0, 50.0], [3.0, 60.0, 70.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for agg, want in (("token-mean", 2.0), ("seq-mean-token-sum", 3.0), ("seq-mean-token-mean", 2.25)):
        assert compute_masked_aggregate(values, mask, loss_agg=agg).item() == pytest.approx(want)
    assert compute_masked_aggregate(values, mask, global_denominator=6.0).item() == pytest.approx(1.0)
    assert compute_entropy_loss(values, mask).item() == pytest.approx(2.0)


def test_kl_and_entropy_hand_worked():
    # p = 0.5, p_ref = 0.25 at the sampled token: d = log(p_ref / p) = -ln 2 = -0.693147.
    # k1 = -d = 0.693147; k2 = d^2 / 2 = 0.240227; k3 = e^d - 1 - d = 0.5 - 1 + 0.693147 = 0.193147.
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    for kind, want in (("k1", 0.693147), ("k2", 0.240227), ("k3", 0.193147)):
        assert compute_kl(lp, ref, kind).item() == pytest.approx(want, abs=1e-6)
    # Uniform logits over 4 classes: entropy ln 4 = 1.386294.
    assert compute_entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(1.386294, abs=1e-6)


def _loop_policy(lp, old, adv, mask, eps_low, eps_high, c):
    out = []
    for rl, ro, ra, rm in zip(lp.tolist(), old.tolist(), adv.tolist(), mask.tolist()):
        row = []
        for a, b, A, m in zip(rl, ro, ra, rm):
            if not m:
                row.append(0.0)
                continue
            rho = math.exp(a - b)
            loss = max(-A * rho, -A * min(max(rho, 1 - eps_low), 1 + eps_high))
            if c is not None and A < 0:
                loss = min(loss, -A * c)
            row.append(loss)
        out.append(row)
    return out


def _loop_agg(values, mask, agg):
    rows = [[v for v, m in zip(rv, rm) if m] for rv, rm in zip(values, mask.tolist())]
    if agg == "token-mean":
        flat = [v for r in rows for v in r]
        return sum(flat) / len(flat)
    per_seq = [sum(r) if agg == "seq-mean-token-sum" else sum(r) / len(r) for r in rows if r]
    return sum(per_seq) / len(per_seq)


def _random(seed, batch=6, length=25):
    g = torch.Generator().manual_seed(seed)
    mask = random_mask(batch, length, g)
    old = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 4
    lp = old + torch.randn(batch, length, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(batch, length, generator=g, dtype=torch.float64)
    return g, lp, old, adv, mask


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
@pytest.mark.parametrize("clips", [(0.2, None, None), (0.2, 0.28, 3.0), (0.1, 0.3, 1.5)])
def test_policy_loss_matches_loop(agg, clips):
    _, lp, old, adv, mask = _random(0)
    low, high, c = clips
    per_token, _ = compute_policy_loss_per_token(lp, old, adv, mask, clip_ratio=low, clip_ratio_high=high, clip_ratio_c=c)
    want = _loop_policy(lp, old, adv, mask, low, low if high is None else high, c)
    # float64; exp/max are the same operations, only summation order differs.
    torch.testing.assert_close(per_token, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    loss, _ = compute_policy_loss(lp, old, adv, mask, clip_ratio=low, clip_ratio_high=high, clip_ratio_c=c, loss_agg=agg)
    assert loss.item() == pytest.approx(_loop_agg(want, mask, agg), rel=1e-12)


def test_policy_gradient_matches_analytic():
    # d loss / d logprob_t = -A_t * rho_t / N where the unclipped term is active, 0 where
    # the clip is active, 0 at padding (token-mean, N = number of response tokens).
    _, lp, old, adv, mask = _random(1)
    lp.requires_grad_(True)
    loss, _ = compute_policy_loss(lp, old, adv, mask)
    (grad,) = torch.autograd.grad(loss, lp)
    rho = torch.exp(lp.detach() - old)
    unclipped = ~((-adv * rho.clamp(0.8, 1.2)) > (-adv * rho))
    want = torch.where(unclipped & mask.bool(), -adv * rho / mask.sum(), torch.zeros(()).double())
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)


def test_kl_and_entropy_match_references():
    g, lp, ref, _, mask = _random(2)
    d = (ref - lp).tolist()
    loops = {
        "k1": [[-x for x in row] for row in d],
        "k2": [[0.5 * x * x for x in row] for row in d],
        "k3": [[math.exp(x) - 1 - x for x in row] for row in d],
    }
    for kind, want in loops.items():
        want = torch.tensor(want, dtype=torch.float64) * mask
        # float64 and the same formula (expm1 vs exp - 1 differ by ~1e-16).
        torch.testing.assert_close(compute_kl(lp, ref, kind, response_mask=mask), want, rtol=1e-10, atol=1e-12)
    logits = torch.randn(5, 7, 11, generator=g, dtype=torch.float64) * 10
    want = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(compute_entropy_from_logits(logits), want, rtol=1e-10, atol=1e-10)


def test_padding_values_do_not_change_losses_metrics_or_gradients():
    g, lp, old, adv, mask = _random(3)
    results = []
    for a, b, c in ((lp, old, adv), tuple(with_garbage(x, mask, g) for x in (lp, old, adv))):
        a = a.clone().requires_grad_(True)
        out = []
        for agg in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"):
            loss, metrics = compute_policy_loss(a, b, c, mask, clip_ratio_c=3.0, loss_agg=agg)
            (grad,) = torch.autograd.grad(loss, a)
            out += [loss.detach(), grad, *metrics.values()]
        for kind in ("k1", "k2", "k3"):
            out.append(compute_kl(a.detach(), b, kind, response_mask=mask))
        out.append(compute_entropy_loss(c, mask))
        results.append(out)
    for clean, dirty in zip(*results):
        assert torch.equal(clean, dirty)


def test_empty_rows_are_left_out_of_sequence_means():
    # Row 1 has no tokens: seq-mean-token-mean over the one real row = mean(1, 3) = 2.
    values = torch.tensor([[1.0, 3.0], [5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert compute_masked_aggregate(values, mask, loss_agg="seq-mean-token-mean").item() == 2.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"old_logprobs": torch.zeros(2, 4)}, r"old_logprobs must have shape \[B, T\] = \(2, 3\)"),
        ({"advantages": torch.zeros(2)}, r"advantages must have shape \[B, T\]"),
        ({"response_mask": torch.full((2, 3), 0.5)}, "response_mask must hold only 0 and 1"),
        ({"loss_agg": "sum"}, "loss_agg must be one of"),
        ({"clip_ratio": -0.1}, r"clip_ratio must lie in \[0.0, 1.0\]"),
        ({"clip_ratio_c": 0.5}, r"clip_ratio_c must lie in \(1.0, inf\]"),
        ({"global_denominator": 0.0}, "global_denominator must lie in"),
    ],
)
def test_policy_loss_bad_input(kwargs, message):
    args = {"logprobs": torch.zeros(2, 3), "old_logprobs": torch.zeros(2, 3), "advantages": torch.zeros(2, 3),
            "response_mask": torch.ones(2, 3)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        compute_policy_loss(args.pop("logprobs"), args.pop("old_logprobs"), args.pop("advantages"),
                            args.pop("response_mask"), **args)


def test_kl_bad_input():
    with pytest.raises(ValueError, match="kind must be one of"):
        compute_kl(torch.zeros(2, 2), torch.zeros(2, 2), "k4")
    with pytest.raises(ValueError, match=r"ref_logprobs must have shape \[B, T\] = \(2, 2\)"):
        compute_kl(torch.zeros(2, 2), torch.zeros(2, 3), "k1")
