"""Sample responses from the policy's own megatron GPTModel (no weight copy, same TP/PP).

This is the CPU engine (CI, laptop runs) and a fallback on GPUs. It is a small sampler of
our own over `GPTModel.forward`, not megatron-core's inference engine, because that
engine's API changed across 0.16 -> 0.19 (controllers, wrappers, request objects); the
pieces used here are the ones the trainer itself relies on plus `StaticInferenceContext`.

* KV cache: megatron's `StaticInferenceContext` (attention keeps per-layer K/V buffers and
  we advance `sequence_len_offset`). Prompts of different lengths are handled the way
  megatron's static engine does: the batch is prefilled up to the shortest prompt, then
  advanced one position at a time; a row whose prompt is longer is fed its own prompt token
  instead of a sample at that position. Positions therefore stay aligned (right padding,
  no left padding and no per-row position ids). `kv_cache=False` recomputes the whole
  prefix every step (O(T^2), the same forward call the trainer makes): it is the fallback
  if a megatron release drops the static context, and the reference the tests compare with.
* Parallelism: every rank of the model runs the forward; pipeline stages pass hidden states
  point-to-point; the last stage gets the logits all-gathered over TP (by megatron), samples and
  broadcasts tokens and log-probs over the pipeline group, so all ranks hold the same
  result. Data-parallel replicas each take a contiguous slice of the P*n rows, and the
  samples are all-gathered over DP at the end.
* Sampler log-probs: log_softmax of the raw logits (temperature 1, no top-p) over the real
  vocabulary (padded rows excluded, as models/logprobs.py does), i.e. the quantity the
  trainer recomputes. Sampling itself uses temperature and top-p; padded rows are never
  sampled. In fp32 they agree with update/forward_backward.compute_logprobs on the same
  tokens within 1e-4 (measured 1e-6 at TP=2, PP=2; tests/rollout/test_megatron_native.py);
  in bf16 the gap is larger (cached decode and full forward round differently; not
  measured on these CPU machines).
* Reproducibility: one torch.Generator per batch chunk, seeded from params.seed and the
  chunk's first row; the same seed, prompts and layout give the same samples.

`update_weights` is a no-op (the engine *is* the policy: an optimizer step is visible to
the next generate()); it does not iterate its argument, so a collective weight stream
passed to it is not started on any rank. `sleep`/`wake` are no-ops: the weights are the
trainer's, and the KV cache lives only inside generate().
Left out: continuous batching, prefix sharing between the n samples of a prompt, top-k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

from prime_megatron.models.builder import unwrap_model
from prime_megatron.rollout.types import Sample, SamplingParams, check_prompts


def compute_sampling_probs(logits: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """Distribution to sample from: softmax(logits / T), restricted to the top-p nucleus.

    logits: [B, V] float. The nucleus keeps the smallest prefix of tokens (by descending
    probability) whose mass reaches top_p; the most likely token is always kept.
    """
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    nucleus = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return nucleus / nucleus.sum(dim=-1, keepdim=True)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator):
    """(token ids [B], raw log-probs [B]) for last-position logits [B, V] (real vocab only)."""
    logits = logits.float()
    raw_logprobs = torch.log_softmax(logits, dim=-1)
    if params.temperature == 0:
        tokens = logits.argmax(dim=-1)
    else:
        probs = compute_sampling_probs(logits, temperature=params.temperature, top_p=params.top_p)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, raw_logprobs.gather(-1, tokens[:, None]).squeeze(-1)


@dataclass
class _Rows:
    """Per-row decoding state of one batch chunk (identical on every rank)."""

    tokens: torch.Tensor  # [B, max_len] long, prompt then response, 0-padded
    prompt_lengths: list[int]
    responses: list[list[int]]
    logprobs: list[list[float]]
    finish: list[str | None]


class MegatronNativeEngine:
    """`RolloutEngine` that generates with `model` itself; collective over all ranks."""

    def __init__(self, model, *, parallel, arch, max_batch_size: int = 64, kv_cache: bool = True):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        # Generation runs without gradients, so DDP's hooks are not needed; with bf16 parameters
        # the bare model computes in bf16 as the wrapper would, and logits are upcast to fp32.
        self.model, self.parallel, self.arch = unwrap_model(model), parallel, arch
        self.max_batch_size = max_batch_size
        self.kv_cache = kv_cache and _static_context_class() is not None

    # ---- RolloutEngine -------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """No-op: the engine samples from the training model, which is already up to date."""

    def sleep(self) -> None:
        """No-op: nothing to release (weights are the trainer's; KV cache is per call)."""

    def wake(self) -> None:
        """No-op, see sleep()."""

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> list[Sample]:
        check_prompts(prompt_token_ids, vocab_size=self.arch.vocab_size)
        longest = max(len(p) for p in prompt_token_ids) + params.max_new_tokens
        if longest > self.arch.max_position_embeddings:
            raise ValueError(f"longest prompt + max_new_tokens = {longest} exceeds the model's "
                             f"max_position_embeddings={self.arch.max_position_embeddings}")
        rows = [list(map(int, p)) for p in prompt_token_ids for _ in range(params.n)]
        share = -(-len(rows) // self.parallel.dp)
        first = self.parallel.dp_rank * share
        mine = []
        for start in range(first, min(first + share, len(rows)), self.max_batch_size):
            chunk = rows[start : min(start + self.max_batch_size, first + share, len(rows))]
            mine += self._generate_chunk(chunk, params, first_row=start)
        samples = self._gather_dp(mine)
        for row, sample in enumerate(samples):
            sample.prompt_index = row // params.n
        return samples

    # ---- one batch chunk -------------------------------------------------------------------
    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams, *, first_row: int):
        batch = len(prompts)
        lengths = [len(p) for p in prompts]
        max_len = max(lengths) + params.max_new_tokens
        device = _model_device(self.model)
        state = _Rows(torch.zeros(batch, max_len, dtype=torch.long, device=device), lengths,
                      [[] for _ in prompts], [[] for _ in prompts], [None] * batch)
        for b, ids in enumerate(prompts):
            state.tokens[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        generator = torch.Generator(device=device)
        generator.manual_seed(params.seed * 1_000_003 + first_row)
        context = _static_context_class()(batch, max_len) if self.kv_cache else None
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self._decode(state, params, generator, context)
        finally:
            self.model.train(was_training)
        return [Sample(0, r, lp, f) for r, lp, f in zip(state.responses, state.logprobs, state.finish)]

    def _decode(self, state: _Rows, params: SamplingParams, generator, context) -> None:
        start = 0
        stop = set(params.stop_token_ids)
        for pos in range(min(state.prompt_lengths), state.tokens.shape[1]):
            logits = self._forward_last(state.tokens[:, start:pos], start, context)
            tokens, logprobs = self._sample_and_broadcast(logits, params, generator, len(state.finish))
            if context is not None:
                context.sequence_len_offset += pos - start
                start = pos
            for b in range(len(state.finish)):
                if pos < state.prompt_lengths[b] or state.finish[b] is not None:
                    continue  # row still inside its prompt (token already there) or finished
                token = int(tokens[b])
                state.tokens[b, pos] = token
                state.responses[b].append(token)
                state.logprobs[b].append(float(logprobs[b]))
                if token in stop:
                    state.finish[b] = "stop"
                elif len(state.responses[b]) == params.max_new_tokens:
                    state.finish[b] = "length"
            if all(f is not None for f in state.finish):
                return

    def _forward_last(self, window: torch.Tensor, start: int, context):
        """Run `window` (tokens at positions start..) through this stage; the last stage
        returns last-position logits [B, V_real] (full vocabulary), other stages None."""
        par = self.parallel
        positions = torch.arange(start, start + window.shape[1], device=window.device).expand_as(window)
        if not par.is_first_stage:
            hidden = torch.empty(window.shape[1], window.shape[0], self.arch.hidden_size,
                                 dtype=_model_dtype(self.model), device=window.device)
            dist.recv(hidden, src=dist.get_global_rank(par.pp_group, par.pp_rank - 1))
            self.model.set_input_tensor(hidden)
        # runtime_gather_output: megatron all-gathers the vocab-parallel logits over TP (its
        # inference path requires it), so every last-stage rank sees the full vocabulary.
        out = self.model(input_ids=window, position_ids=positions, attention_mask=None,
                         inference_context=context, runtime_gather_output=True)
        if not par.is_last_stage:
            dist.send(out.contiguous(), dst=dist.get_global_rank(par.pp_group, par.pp_rank + 1))
            return None
        return out[:, -1, : self.arch.vocab_size]  # [B, V_real]; padded vocab rows dropped

    def _sample_and_broadcast(self, logits, params, generator, batch: int):
        """Sample on the last stage (every TP rank holds the same gathered logits and the same
        generator state, so they draw the same tokens), then share over the pipeline."""
        par = self.parallel
        device = _model_device(self.model)
        if par.is_last_stage:
            tokens, logprobs = sample_next(logits, params, generator)
        else:
            tokens = torch.empty(batch, dtype=torch.long, device=device)
            logprobs = torch.empty(batch, dtype=torch.float32, device=device)
        if par.pp > 1:
            src = dist.get_global_rank(par.pp_group, par.pp - 1)
            dist.broadcast(tokens, src=src, group=par.pp_group)
            dist.broadcast(logprobs, src=src, group=par.pp_group)
        return tokens.cpu(), logprobs.cpu()

    def _gather_dp(self, mine: list[Sample]) -> list[Sample]:
        if self.parallel.dp == 1:
            return mine
        parts: list = [None] * self.parallel.dp
        dist.all_gather_object(parts, mine, group=self.parallel.dp_group)
        return [s for part in parts for s in part]


def _static_context_class():
    """megatron's StaticInferenceContext, or None on a release without it (then recompute)."""
    try:
        from megatron.core.inference.contexts import StaticInferenceContext
    except ImportError:
        return None
    return StaticInferenceContext


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype
