"""Implicit PRM rewards, PRM losses and ranking accuracy: hand-worked numbers, Python loop
references, padding invariance, gradients and input errors."""
import math

import pytest
import torch

from prime_megatron.reward.implicit import (
    compute_implicit_rewards,
    compute_implicit_sequence_scores,
    compute_prm_loss,
    compute_prm_ranking_accuracy,
)
from tests.advantage.inputs import random_mask, with_garbage


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _loop_scores(prm, ref, mask, beta):
    return [beta * sum(p - r for p, r, m in zip(rp, rr, rm) if m) for rp, rr, rm in zip(prm.tolist(), ref.tolist(), mask.tolist())]


def _loop_ce(prm, ref, mask, labels, beta):
    losses = []
    for z, y in zip(_loop_scores(prm, ref, mask, beta), labels.tolist()):
        p = _sigmoid(z)
        losses.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    return sum(losses) / len(losses)


def _loop_pairwise(prm, ref, mask, labels, beta, k):
    z, y = _loop_scores(prm, ref, mask, beta), labels.tolist()
    num = den = 0.0
    for g0 in range(0, len(y), k):
        for i in range(g0, g0 + k):
            for j in range(g0, g0 + k):
                if y[i] > y[j]:
                    w = y[i] - y[j]
                    num += w * -math.log(_sigmoid(z[i] - z[j]))
                    den += w
    return num / den


def _loop_ranking(prm, ref, mask, labels, k, empty_value=0.5):
    z, y = _loop_scores(prm, ref, mask, 1.0), labels.tolist()
    accs = []
    for g0 in range(0, len(y), k):
        right = total = 0.0
        for i in range(g0, g0 + k):
            for j in range(g0, g0 + k):
                if y[i] > y[j]:
                    w = y[i] - y[j]
                    right += w * (1.0 if z[i] > z[j] else 0.5 if z[i] == z[j] else 0.0)
                    total += w
        accs.append(right / total if total > 0 else empty_value)
    return sum(accs) / len(accs)


def test_implicit_rewards_hand_worked():
    # prm - ref at the two response tokens: -1 - (-1.5) = 0.5 and -2 - (-1) = -1;
    # times beta 0.05: [0.025, -0.05]; padding 0.
    prm = torch.tensor([[-1.0, -2.0, -3.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(
        compute_implicit_rewards(prm, ref, mask, beta=0.05), torch.tensor([[0.025, -0.05, 0.0]], dtype=torch.float64)
    )
    # "whole": the sum 0.025 - 0.05 = -0.025 on the last response token (t=1).
    torch.testing.assert_close(
        compute_implicit_rewards(prm, ref, mask, beta=0.05, granularity="whole"),
        torch.tensor([[0.0, -0.025, 0.0]], dtype=torch.float64),
    )


def test_ce_loss_hand_worked():
    # Summed log-ratio 2 (tokens 1.5 + 0.5), beta 0.05 -> z = 0.1.
    # label 1: -log sigmoid(0.1) = log(1 + e^-0.1) = log(1.904837) = 0.644397
    # label 0: -log(1 - sigmoid(0.1)) = log(1 + e^0.1) = log(2.105171) = 0.744397
    # label 0.5 (soft): the mean of both, 0.694397
    prm = torch.tensor([[1.5, 0.5, 0.0]])
    ref = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    for label, want in ((1.0, 0.644397), (0.0, 0.744397), (0.5, 0.694397)):
        loss = compute_prm_loss(prm, ref, mask, torch.tensor([label]), beta=0.05)
        # float32 logits path; 6 printed decimals -> 1e-6.
        assert loss.item() == pytest.approx(want, abs=1e-6)


def test_pairwise_loss_hand_worked():
    # One group of 2: z = 0.05 * [2, -2] = [0.1, -0.1], labels [1, 0]: one pair,
    # -log sigmoid(0.1 - (-0.1)) = log(1 + e^-0.2) = log(1.818731) = 0.598139.
    prm = torch.tensor([[2.0], [-2.0]])
    loss = compute_prm_loss(prm, torch.zeros(2, 1), torch.ones(2, 1), torch.tensor([1.0, 0.0]), beta=0.05,
                            loss_type="pairwise", group_size=2)
    assert loss.item() == pytest.approx(0.598139, abs=1e-6)


def test_ranking_accuracy_hand_worked():
    # Group 1: labels [1, 0, 0, 1], scores [3, 1, 2, 1.5]. Pairs (right > wrong):
    # (0,1) 3>1 yes, (0,2) 3>2 yes, (3,1) 1.5>1 yes, (3,2) 1.5>2 no -> 3/4.
    # Group 2: all labels 1 -> uninformative, 0.5 (PRIME's convention). Mean: 0.625.
    prm = torch.tensor([[3.0], [1.0], [2.0], [1.5], [0.0], [1.0], [2.0], [3.0]])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    args = (prm, torch.zeros(8, 1), torch.ones(8, 1), labels)
    assert compute_prm_ranking_accuracy(*args, group_size=4).item() == pytest.approx(0.625)
    assert compute_prm_ranking_accuracy(*args, group_size=4, uninformative_group_value=None).item() == pytest.approx(0.75)
    # A tie counts one half: group [1, 0] with equal scores.
    tie = compute_prm_ranking_accuracy(torch.ones(2, 1), torch.zeros(2, 1), torch.ones(2, 1), torch.tensor([1.0, 0.0]),
                                       group_size=2)
    assert tie.item() == 0.5


def _random(seed, batch=12, length=20, soft=False):
    g = torch.Generator().manual_seed(seed)
    mask = random_mask(batch, length, g)
    prm = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3
    ref = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3
    labels = torch.rand(batch, generator=g, dtype=torch.float64) if soft else torch.randint(0, 2, (batch,), generator=g).double()
    return g, prm, ref, mask, labels


@pytest.mark.parametrize("soft", [False, True])
def test_match_loop_references(soft):
    _, prm, ref, mask, labels = _random(0, soft=soft)
    # float64 inputs; the loops sum in another order and use log(sigmoid) instead of
    # softplus: agreement to ~1e-14, checked at 1e-10.
    scores = compute_implicit_sequence_scores(prm, ref, mask, beta=0.1)
    torch.testing.assert_close(scores, torch.tensor(_loop_scores(prm, ref, mask, 0.1), dtype=torch.float64))
    want = [[0.1 * (p - r) if m else 0.0 for p, r, m in zip(a, b, c)] for a, b, c in zip(prm.tolist(), ref.tolist(), mask.tolist())]
    torch.testing.assert_close(compute_implicit_rewards(prm, ref, mask, beta=0.1), torch.tensor(want, dtype=torch.float64))
    ce = compute_prm_loss(prm, ref, mask, labels, beta=0.1)
    assert ce.item() == pytest.approx(_loop_ce(prm, ref, mask, labels, 0.1), rel=1e-10)
    pair = compute_prm_loss(prm, ref, mask, labels, beta=0.1, loss_type="pairwise", group_size=4)
    assert pair.item() == pytest.approx(_loop_pairwise(prm, ref, mask, labels, 0.1, 4), rel=1e-10)
    acc = compute_prm_ranking_accuracy(prm, ref, mask, labels, group_size=4)
    assert acc.item() == pytest.approx(_loop_ranking(prm, ref, mask, labels, 4), rel=1e-12)


def test_padding_values_do_not_change_results_or_gradients():
    g, prm, ref, mask, labels = _random(1)
    results = []
    for p, r in ((prm, ref), (with_garbage(prm, mask, g), with_garbage(ref, mask, g))):
        p = p.clone().requires_grad_(True)
        out = [
            compute_implicit_rewards(p, r, mask, beta=0.05),
            compute_implicit_rewards(p, r, mask, beta=0.05, granularity="whole"),
            compute_prm_ranking_accuracy(p, r, mask, labels, group_size=4),
        ]
        for loss_type in ("ce", "pairwise"):
            loss = compute_prm_loss(p, r, mask, labels, beta=0.05, loss_type=loss_type, group_size=4)
            (grad,) = torch.autograd.grad(loss, p)
            out += [loss.detach(), grad]
        results.append(out)
    for clean, dirty in zip(*results):
        assert torch.equal(clean, dirty)


def test_ce_gradient_is_analytic():
    # dL/dprm_t = beta * (sigmoid(z_b) - y_b) / B at response tokens, 0 at padding.
    _, prm, ref, mask, labels = _random(2)
    prm.requires_grad_(True)
    loss = compute_prm_loss(prm, ref, mask, labels, beta=0.05)
    (grad,) = torch.autograd.grad(loss, prm)
    z = torch.tensor(_loop_scores(prm.detach(), ref, mask, 0.05), dtype=torch.float64)
    want = (0.05 * (torch.sigmoid(z) - labels) / len(labels)).unsqueeze(1) * mask
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)


def test_pairwise_without_informative_pair_is_zero_with_graph():
    prm = torch.zeros(4, 2, requires_grad=True)
    loss = compute_prm_loss(prm, torch.zeros(4, 2), torch.ones(4, 2), torch.ones(4), beta=0.05,
                            loss_type="pairwise", group_size=2)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(prm.grad, torch.zeros(4, 2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": torch.tensor([0.0, 1.5, 0.0, 1.0])}, r"labels must lie in \[0, 1\]"),
        ({"labels": torch.zeros(3)}, r"labels must have shape \[B\] = \(4,\)"),
        ({"ref_logprobs": torch.zeros(4, 2)}, r"ref_logprobs must have shape \[B, T\] = \(4, 3\)"),
        ({"response_mask": torch.full((4, 3), -1.0)}, "response_mask must hold only 0 and 1"),
        ({"beta": 0.0}, r"beta must lie in \(0.0, inf\]"),
        ({"loss_type": "hinge"}, "loss_type must be one of"),
        ({"loss_type": "pairwise"}, "group_size"),
        ({"loss_type": "pairwise", "group_size": 3}, "not divisible by group_size"),
    ],
)
def test_bad_input_names_the_argument(kwargs, message):
    args = {"prm_logprobs": torch.zeros(4, 3), "ref_logprobs": torch.zeros(4, 3), "response_mask": torch.ones(4, 3),
            "labels": torch.zeros(4), "beta": 0.05}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        compute_prm_loss(args.pop("prm_logprobs"), args.pop("ref_logprobs"), args.pop("response_mask"),
                         args.pop("labels"), **args)


def test_implicit_rewards_bad_input():
    with pytest.raises(ValueError, match="granularity must be one of"):
        compute_implicit_rewards(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2), beta=0.05, granularity="step")
    with pytest.raises(ValueError, match=r"prm_logprobs must have shape \[B, T\] = \(2, 2\)"):
        compute_implicit_rewards(torch.zeros(2), torch.zeros(2, 2), torch.ones(2, 2), beta=0.05)
    with pytest.raises(ValueError, match="response_mask row 1 has no response token"):
        compute_implicit_rewards(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([[1.0, 0], [0, 0]]), beta=0.05,
                                 granularity="whole")
