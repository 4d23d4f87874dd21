"""The megatron-native rollout engine against independent references.

One 4-rank gloo launch. Phase A (tp=2, pp=2): reproducibility, all ranks agree, greedy
KV-cached decoding == greedy full-prefix recompute, n samples grouped, stop tokens, and
sampler log-probs vs the trainer's compute_logprobs. Phase B (tp=2, dp=2): the DP split
gives exactly what a single replica produces for the same chunks.
"""
import math

import pytest
import torch

from prime_megatron.rollout.megatron_native import compute_sampling_probs
from prime_megatron.rollout.types import Sample, SamplingParams
from tests.distributed import run_distributed

ARCH = dict(family="qwen2", vocab_size=250, hidden_size=64, intermediate_size=128, num_layers=4,
            num_attention_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6,
            qkv_bias=True, tie_word_embeddings=False, max_position_embeddings=64)
PROMPTS = [[5, 17, 42, 8, 99], [3, 4], [120, 7, 7]]  # unequal lengths on purpose
# fp32 everywhere. The sampler's log-prob comes from a KV-cached forward over one query and
# megatron's gathered logits + torch.log_softmax; the trainer's from a full causal forward and
# the chunked vocab-parallel log-softmax. Both are exact formulas evaluated in different
# summation orders; measured max gap 9.5e-7 (KV-cached vs recompute: 4.8e-7), so 1e-4 leaves
# two orders of margin while a real mismatch (wrong position or token: log-prob differences of
# order 0.1-5 for this random model) is far outside it.
LOGPROB_BOUND = 1e-4


def test_sampling_probs_hand_worked():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    # T=1, top_p=0.6: nucleus {0.5, 0.3} (mass before 0.3 is 0.5 < 0.6), renormalised by 0.8.
    got = compute_sampling_probs(logits, temperature=1.0, top_p=0.6)
    assert torch.allclose(got, torch.tensor([[0.625, 0.375, 0.0]]))
    # top_p=0.5: the mass before the 2nd token is already 0.5 >= 0.5, so only the top token.
    got = compute_sampling_probs(logits, temperature=1.0, top_p=0.5)
    assert torch.allclose(got, torch.tensor([[1.0, 0.0, 0.0]]))
    # T=2: p^(1/2) renormalised: sqrt(.5)=.70711, sqrt(.3)=.54772, sqrt(.2)=.44721, sum 1.70204.
    got = compute_sampling_probs(logits, temperature=2.0, top_p=1.0)
    assert torch.allclose(got, torch.tensor([[0.41545, 0.32181, 0.26275]]), atol=1e-5)


def test_params_and_samples_reject_bad_input():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="n must"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="logprobs"):
        Sample(0, [1, 2], [0.0], "stop")


def _build(tp, pp, seed=11):
    from prime_megatron.models.arch import ModelArch
    from prime_megatron.models.builder import build_model
    from prime_megatron.parallel import init_parallel

    parallel = init_parallel(tp=tp, pp=pp, seed=seed)
    arch = ModelArch(**ARCH)
    model = build_model(arch, parallel=parallel)
    return parallel, arch, model


def _as_tuples(samples):
    return [(s.prompt_index, tuple(s.response_ids), tuple(s.logprobs), s.finish_reason) for s in samples]


def _trainer_logprobs(model, parallel, samples, prompts):
    from prime_megatron.update.batch import SequenceBatch
    from prime_megatron.update.forward_backward import compute_logprobs

    rows = [prompts[s.prompt_index] + s.response_ids for s in samples]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
    batch = SequenceBatch(ids, torch.tensor([len(prompts[s.prompt_index]) for s in samples]),
                          torch.tensor([len(s.response_ids) for s in samples]))
    return compute_logprobs(model, batch, parallel=parallel, micro_batch_size=4), batch.response_mask()


def _phase_tp_pp():
    from prime_megatron.rollout.megatron_native import MegatronNativeEngine

    parallel, arch, model = _build(tp=2, pp=2)
    engine = MegatronNativeEngine(model, parallel=parallel, arch=arch)
    sampled = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=5)
    first = engine.generate(PROMPTS, sampled)
    again = engine.generate(PROMPTS, sampled)
    other_seed = engine.generate(PROMPTS, SamplingParams(**{**sampled.__dict__, "seed": 6}))
    greedy = SamplingParams(n=2, temperature=0.0, max_new_tokens=10)
    greedy_kv = engine.generate(PROMPTS, greedy)
    greedy_one = engine.generate(PROMPTS, SamplingParams(n=1, temperature=0.0, max_new_tokens=10))
    recompute = MegatronNativeEngine(model, parallel=parallel, arch=arch, kv_cache=False)
    greedy_full = recompute.generate(PROMPTS, greedy)
    # Stop token: the 3rd token of the first sample, so at least one row must stop there.
    stop_token = first[0].response_ids[2]
    stopped = engine.generate(PROMPTS, SamplingParams(**{**sampled.__dict__, "stop_token_ids": (stop_token,)}))
    trainer_lp, mask = _trainer_logprobs(model, parallel, first, PROMPTS)
    return dict(first=_as_tuples(first), again=_as_tuples(again), other_seed=_as_tuples(other_seed),
                greedy_kv=_as_tuples(greedy_kv), greedy_one=_as_tuples(greedy_one),
                greedy_full=_as_tuples(greedy_full), stop_token=stop_token, stopped=_as_tuples(stopped),
                trainer_lp=trainer_lp.tolist(), mask=mask.tolist())  # plain lists: tensors do not survive the result queue


def _phase_dp():
    import dataclasses

    from prime_megatron.rollout.megatron_native import MegatronNativeEngine

    parallel, arch, model = _build(tp=2, pp=1)
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=6, seed=9)
    split = MegatronNativeEngine(model, parallel=parallel, arch=arch).generate(PROMPTS, params)
    # The same replica alone (dp=1 view, same TP group): chunks of 3 rows reproduce the
    # DP split of 6 rows over 2 replicas, so every sample must match bitwise.
    alone_state = dataclasses.replace(parallel, dp=1, dp_rank=0, world_size=parallel.tp * parallel.pp)
    alone = MegatronNativeEngine(model, parallel=alone_state, arch=arch, max_batch_size=3).generate(PROMPTS, params)
    return dict(split=_as_tuples(split), alone=_as_tuples(alone))


def _worker(rank, world_size):
    from prime_megatron.parallel import destroy_parallel

    out = {"tp_pp": _phase_tp_pp()}
    out["dp"] = _phase_dp()
    destroy_parallel()
    return out


@pytest.fixture(scope="module")
def results():
    return run_distributed(_worker, world_size=4, timeout_s=240)


def test_same_result_on_every_rank(results):
    for r in results[1:]:
        assert r["tp_pp"]["first"] == results[0]["tp_pp"]["first"]
        assert r["dp"]["split"] == results[0]["dp"]["split"]


def test_reproducible_for_fixed_seed(results):
    r = results[0]["tp_pp"]
    assert r["first"] == r["again"]
    assert [s[1] for s in r["first"]] != [s[1] for s in r["other_seed"]]


def test_n_samples_grouped_in_prompt_order(results):
    r = results[0]["tp_pp"]
    assert [s[0] for s in r["first"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Greedy: sample i of the n=2 run must be prompt i // 2's greedy response of the n=1 run.
    assert [s[1] for s in r["greedy_kv"]] == [s[1] for s in r["greedy_one"] for _ in range(2)]


def test_kv_cache_matches_full_recompute(results):
    r = results[0]["tp_pp"]
    assert [s[1] for s in r["greedy_kv"]] == [s[1] for s in r["greedy_full"]]
    for kv, full in zip(r["greedy_kv"], r["greedy_full"]):
        assert max(abs(a - b) for a, b in zip(kv[2], full[2])) < LOGPROB_BOUND


def test_stops_on_stop_token(results):
    r = results[0]["tp_pp"]
    stop, stopped_any = r["stop_token"], False
    for full, cut in zip(r["first"], r["stopped"]):
        ids = list(full[1])
        if stop in ids:  # same seed: identical draws up to and including the first stop token
            end = ids.index(stop) + 1
            assert cut[1] == tuple(ids[:end]) and cut[3] == "stop"
            stopped_any = True
        else:
            assert cut[1] == full[1] and cut[3] == "length"
    assert stopped_any
    assert all(s[3] == "length" and len(s[1]) == 10 for s in r["first"] if stop not in s[1][:-1])


def test_sampler_logprobs_match_trainer(results):
    r = results[0]["tp_pp"]
    trainer, mask = torch.tensor(r["trainer_lp"]), torch.tensor(r["mask"])
    sampler = torch.zeros_like(trainer)
    for b, s in enumerate(r["first"]):
        sampler[b, : len(s[2])] = torch.tensor(s[2])
    assert mask.sum().item() == sum(len(s[1]) for s in r["first"])
    diff = ((sampler - trainer) * mask).abs().max().item()
    print(f"max |sampler - trainer| log-prob = {diff:.2e}")
    assert diff < LOGPROB_BOUND, diff
    assert all(math.isfinite(x) and x <= 0 for s in r["first"] for x in s[2])


def test_dp_split_equals_single_replica(results):
    r = results[0]["dp"]
    assert r["split"] == r["alone"]
