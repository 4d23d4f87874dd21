"""TP/PP parity of the micro-batched forward/backward (one 4-rank gloo launch, ~1 minute).

One launch runs four layouts in turn, each from the same full weights: tp1xpp1 (dp=4, the
reference), tp2 (dp=2), pp2 (dp=2), tp2xpp2 (dp=1). Every rank feeds the same batch, so
dp replicas compute the same thing. Each layout also uses a different micro_batch_size, so
agreement shows the loss is independent of micro-batching and of the length sort.

Independent references:
  - tp1xpp1 log-probs are checked against a per-row dense forward (no micro-batching, no
    padding) with torch.log_softmax over the 250 real tokens;
  - other layouts are checked against tp1xpp1: log-probs, entropies, loss and every local
    gradient slice (untied model, plain module, param.grad), then loss, grad_norm and the
    returned log-probs of train_on_batch with megatron DDP + DistributedOptimizer on a model
    with tied embeddings (the pp=2 tie is synced by finalize_model_grads).
"""
from __future__ import annotations

import torch

from tests.distributed import run_distributed
from tests.models.reference import QWEN2_TINY, iter_local_with_full, load_full_state_, local_slice, randomize_

LAYOUTS = [((1, 1), 4), ((2, 1), 3), ((1, 2), 1), ((2, 2), 2)]  # ((tp, pp), micro_batch_size)
PROMPTS = [3, 5, 2, 7, 4, 1]
RESPONSES = [6, 0, 9, 3, 11, 4]  # a zero-length response and a one-token prompt on purpose


def _batch():
    from prime_megatron.update.batch import SequenceBatch

    gen = torch.Generator().manual_seed(3)
    width = max(p + r for p, r in zip(PROMPTS, RESPONSES)) + 2  # right padding beyond every row
    ids = torch.randint(0, 250, (len(PROMPTS), width), generator=gen)
    for row, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        ids[row, p + r:] = -100  # padding may be any id, even outside the vocabulary
    return SequenceBatch(ids, torch.tensor(PROMPTS), torch.tensor(RESPONSES))


def _loss_fn(batch):
    """Token-weighted logprob + entropy objective, normalised by the whole batch's tokens."""
    gen = torch.Generator().manual_seed(5)
    weights = torch.randn(batch.batch_size, batch.max_response_length, generator=gen)
    mask = batch.response_mask()
    total = mask.sum()

    def loss_fn(logprobs, entropy, index):
        m = mask[index]
        loss = ((weights[index] * logprobs + 0.1 * entropy) * m).sum() / total
        return loss, {"tokens": m.sum()}

    return loss_fn


def _dense_reference_logprobs(model, batch):
    """Row by row, unpadded, full softmax over the real vocabulary (tp=pp=1 only)."""
    out = torch.zeros(batch.batch_size, batch.max_response_length)
    with torch.no_grad():
        for b in range(batch.batch_size):
            p, r = int(batch.prompt_lengths[b]), int(batch.response_lengths[b])
            ids = batch.input_ids[b, : p + r].unsqueeze(0)
            logits = model(ids, torch.arange(p + r).unsqueeze(0), None)[0, :, :250]
            logp = torch.log_softmax(logits.double(), dim=-1)
            for j in range(r):
                out[b, j] = logp[p - 1 + j, ids[0, p + j]]
    return out


def _grad_check(model, batch, full, parallel, mbs):
    from prime_megatron.update.forward_backward import compute_logprobs, forward_backward

    lp, ent = compute_logprobs(model, batch, parallel=parallel, micro_batch_size=mbs, with_entropy=True,
                               logprob_chunk_size=7)
    out = forward_backward(model, batch, _loss_fn(batch), parallel=parallel, micro_batch_size=mbs,
                           with_entropy=True, return_logprobs=True, logprob_chunk_size=5)
    grads = {}
    for name, param, _ in iter_local_with_full(model, full, parallel, QWEN2_TINY["num_hidden_layers"]):
        grads[name] = (param.grad.clone(), param)
    return lp, ent, out, grads


def _train_check(arch, full_tied, batch, parallel, mbs):
    from prime_megatron.models.builder import build_model
    from prime_megatron.update.forward_backward import train_on_batch
    from prime_megatron.update.optimizer import build_optimizer, wrap_ddp

    model = build_model(arch, parallel=parallel)
    load_full_state_(model, full_tied, parallel, arch.num_layers)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ddp = wrap_ddp(model, parallel=parallel)
    optimizer = build_optimizer(ddp, lr=1e-3, clip_grad=1e6, parallel=parallel)
    out = train_on_batch(ddp, optimizer, batch, _loss_fn(batch), parallel=parallel, micro_batch_size=mbs,
                         with_entropy=True, return_logprobs=True)
    step = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters())
    return {"loss": out["loss"], "grad_norm": out["grad_norm"], "logprobs": out["logprobs"], "max_step": step,
            "ok": out["update_successful"]}


def _parity_worker(rank, world_size):
    from prime_megatron.models.arch import load_arch
    from prime_megatron.models.builder import build_model
    from prime_megatron.parallel import init_parallel

    arch, tied = load_arch(QWEN2_TINY), load_arch(dict(QWEN2_TINY, tie_word_embeddings=True))
    batch = _batch()
    report, full, full_tied, ref_grads = {}, None, None, None
    for (tp, pp), mbs in LAYOUTS:
        parallel = init_parallel(tp=tp, pp=pp)
        model = build_model(arch, parallel=parallel)
        entry = {}
        if full is None:
            full = randomize_(model, seed=11)
            full_tied = randomize_(build_model(tied, parallel=parallel), seed=12)
            entry["dense"] = _dense_reference_logprobs(model, batch)
        else:
            load_full_state_(model, full, parallel, arch.num_layers)
        lp, ent, out, grads = _grad_check(model, batch, full, parallel, mbs)
        if ref_grads is None:
            ref_grads = {name: g for name, (g, _) in grads.items()}
        entry.update(lp=lp, ent=ent, loss=out["loss"], fb_logprobs=out["logprobs"], fb_entropy=out["entropy"])
        entry["grad_err"] = _grad_errors(grads, ref_grads, parallel, arch.num_layers)
        entry["train"] = _train_check(tied, full_tied, batch, parallel, mbs)
        report[(tp, pp)] = entry
    torch.distributed.barrier()  # rank 0 hosts the rendezvous store: no one leaves early
    # numpy, not tensors: torch pickles tensors through shared memory that dies with this process.
    return _to_numpy(report)


def _to_numpy(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj


def _to_torch(obj):
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    return torch.from_numpy(obj) if hasattr(obj, "dtype") and hasattr(obj, "shape") and obj.shape != () else obj


def _grad_errors(grads, ref_grads, parallel, num_layers):
    """Max |local grad - matching slice of the reference grad|, relative to the slice's max."""
    from tests.models.reference import _global_name, layer_offset

    errors = {}
    for name, (grad, param) in grads.items():
        key = _global_name(name, layer_offset(num_layers, parallel))
        expected = local_slice(name, ref_grads[key], param, tp=parallel.tp, tp_rank=parallel.tp_rank)
        errors[key] = float((grad - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
    return errors


def test_tp_pp_parity_of_logprobs_losses_and_gradients():
    reports = [_to_torch(r) for r in run_distributed(_parity_worker, world_size=4, timeout_s=600)]
    batch = _batch()
    mask = batch.response_mask().bool()
    ref = reports[0][(1, 1)]
    # fp64 dense softmax vs float32 model + float32 chunked log-softmax: logits are O(1), log-probs
    # O(log 250 = 5.5); float32 relative precision 1.2e-7 accumulated over two layers of
    # hidden-64 dot products stays below 1e-5 absolute.
    assert torch.allclose(ref["lp"][mask], ref["dense"][mask], atol=1e-5, rtol=0)
    assert (ref["lp"][~mask] == 0).all() and (ref["ent"][~mask] == 0).all()
    assert torch.equal(ref["fb_logprobs"], ref["lp"])  # same forward, same numbers
    for rank, report in enumerate(reports):
        for layout, entry in report.items():
            where = f"rank {rank} layout tp,pp={layout}"
            # Sharding only reorders float32 sums (row-parallel all-reduce, split softmax
            # normaliser): a few ulps of O(5) values, observed <= 1e-6; 1e-5 leaves 10x margin.
            assert torch.allclose(entry["lp"], ref["lp"], atol=1e-5, rtol=0), where
            assert torch.allclose(entry["ent"], ref["ent"], atol=1e-5, rtol=0), where
            assert torch.allclose(entry["fb_logprobs"], ref["lp"], atol=1e-5, rtol=0), where
            assert torch.allclose(entry["fb_entropy"], ref["ent"], atol=1e-5, rtol=0), where
            assert abs(entry["loss"] - ref["loss"]) <= 1e-5 * max(1.0, abs(ref["loss"])), where
            # Gradients relative to each tensor's largest entry: the same reordered float32 sums
            # through backward, observed <= 7e-7 (a few float32 epsilons); 1e-5 leaves ~15x margin,
            # while a wrong shard or a missed tied/pp reduction is off by O(1).
            worst = max(entry["grad_err"].items(), key=lambda kv: kv[1])
            assert worst[1] < 1e-5, f"{where}: gradient of {worst[0]} differs by {worst[1]:.2e} (relative)"
            train, ref_train = entry["train"], ref["train"]
            assert train["ok"] == 1.0, where
            assert abs(train["loss"] - ref_train["loss"]) <= 1e-5 * max(1.0, abs(ref_train["loss"])), where
            # grad_norm is a global reduction over tp, pp (tied embedding counted once) and dp shards.
            assert abs(train["grad_norm"] - ref_train["grad_norm"]) <= 1e-4 * ref_train["grad_norm"], where
            assert torch.allclose(train["logprobs"], ref_train["logprobs"], atol=1e-5, rtol=0), where
            # Adam's first step moves each weight by lr * g / (|g| + eps) <= lr = 1e-3 (~lr where
            # |g| >> eps); measured through float32 weights of magnitude <= 2, whose spacing is 2.4e-7.
            assert 0.5e-3 < train["max_step"] <= 1e-3 + 2.4e-7, where


def test_sequence_batch_mask_select_and_errors():
    import pytest

    from prime_megatron.update.batch import SequenceBatch

    ids = torch.arange(18).view(3, 6)
    batch = SequenceBatch(ids, torch.tensor([2, 1, 3]), torch.tensor([3, 0, 2]))
    assert batch.response_mask().tolist() == [[1, 1, 1], [0, 0, 0], [1, 1, 0]]
    assert batch.response_ids().tolist() == [[2, 3, 4], [0, 0, 0], [15, 16, 0]]
    sub = batch.select([1, 2])  # rows of lengths 1 and 5 -> width 5
    assert sub.input_ids.shape == (2, 5) and sub.response_mask().tolist() == [[0, 0], [1, 1]]
    with pytest.raises(ValueError, match="row 0: prompt\\+response length 7 exceeds input_ids width 6"):
        SequenceBatch(ids, torch.tensor([4, 1, 1]), torch.tensor([3, 0, 0]))
    with pytest.raises(ValueError, match="row 1: prompt_lengths must be >= 1"):
        SequenceBatch(ids, torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1]))


def test_micro_batches_sorted_by_length_and_trimmed():
    from prime_megatron.update.forward_backward import plan_micro_batches

    batch = _batch()  # total lengths 9, 5, 11, 10, 15, 5
    plans = plan_micro_batches(batch, micro_batch_size=4)
    assert [p.index.tolist() for p in plans] == [[4, 2, 3, 0], [1, 5]]
    assert [p.input_ids.shape[1] for p in plans] == [15, 5]  # each trimmed to its longest row
    assert (plans[0].input_ids[3, 9:] == 0).all()  # row 0's padding (-100) fed as token 0
    # Kept in batch order when asked, or when one micro-batch holds everything (sorting buys nothing).
    assert [p.index.tolist() for p in plan_micro_batches(batch, 4, sort_by_length=False)] == [[0, 1, 2, 3], [4, 5]]
    assert [p.index.tolist() for p in plan_micro_batches(batch, 6)] == [[0, 1, 2, 3, 4, 5]]
