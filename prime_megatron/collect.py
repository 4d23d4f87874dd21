"""Rollout -> verify -> filter: fill one training batch of prompt groups.

`BatchCollector.next_batch()` draws prompts from the stream, samples K responses for each
from the rollout engine, scores them with the outcome verifiers and keeps the groups the
online prompt filter accepts (accuracy in [acc_low, acc_high], optionally no truncated
response). It keeps drawing until `batch_prompts` groups are kept; surplus groups wait in a
buffer for the next step, and that buffer is part of the checkpoint.

Every rank holds the same rollout (the megatron-native engine returns it on all ranks, and
an external engine is driven identically on all of them), and verification runs on global
rank 0 only, its scores broadcast, so all ranks keep the same groups.

Left out: asynchronous (off-policy) rollout and per-prompt adaptive K.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist

from prime_megatron.data.loader import TokenizedPrompt
from prime_megatron.data.schema import PromptRecord
from prime_megatron.reward.filter import filter_groups
from prime_megatron.rollout.types import Sample, SamplingParams
from prime_megatron.update.batch import SequenceBatch


@dataclass
class Group:
    """One prompt with its K scored responses."""
    prompt: TokenizedPrompt
    samples: list[Sample]
    scores: list[float]


@dataclass
class RolloutBatch:
    """K adjacent rows per prompt; all tensors on one device (CPU as built, see `to`)."""
    sequences: SequenceBatch
    outcome_rewards: torch.Tensor  # [B] in [0, 1]
    truncated: torch.Tensor  # [B] bool: finish_reason == "length"
    sampler_logprobs: torch.Tensor  # [B, T]
    group_size: int

    @property
    def response_mask(self) -> torch.Tensor:
        return self.sequences.response_mask()

    def to(self, device) -> "RolloutBatch":
        return RolloutBatch(self.sequences.to(device), self.outcome_rewards.to(device), self.truncated.to(device),
                            self.sampler_logprobs.to(device), self.group_size)


def build_rollout_batch(groups: list[Group], *, pad_id: int) -> RolloutBatch:
    rows = [(g.prompt.prompt_ids, s, score) for g in groups for s, score in zip(g.samples, g.scores)]
    width = max(len(p) + len(s.response_ids) for p, s, _ in rows)
    longest = max(len(s.response_ids) for _, s, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    logprobs = torch.zeros(len(rows), longest)
    for b, (prompt, sample, _) in enumerate(rows):
        ids = list(prompt) + list(sample.response_ids)
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        logprobs[b, : len(sample.logprobs)] = torch.tensor(sample.logprobs)
    return RolloutBatch(
        sequences=SequenceBatch(
            input_ids,
            torch.tensor([len(p) for p, _, _ in rows], dtype=torch.long),
            torch.tensor([len(s.response_ids) for _, s, _ in rows], dtype=torch.long),
        ),
        outcome_rewards=torch.tensor([score for _, _, score in rows], dtype=torch.float32),
        truncated=torch.tensor([s.finish_reason == "length" for _, s, _ in rows]),
        sampler_logprobs=logprobs,
        group_size=len(groups[0].samples),
    )


def _broadcast_from_rank0(obj):
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class BatchCollector:
    stream: object  # PromptStream[TokenizedPrompt]
    engine: object  # RolloutEngine
    score_fn: object  # (prompts, samples) -> (scores, failure counts); see reward/manager.py
    params: SamplingParams
    batch_prompts: int
    filter_enabled: bool = True
    acc_low: float = 0.2
    acc_high: float = 0.8
    drop_truncated: bool = False
    max_rounds: int = 8
    buffer: list[Group] = field(default_factory=list)
    rounds: int = 0  # rollout rounds so far; seeds each round, so a resumed run samples the same

    def _round(self, metrics: dict) -> None:
        prompts = self.stream.next_batch(self.batch_prompts)
        params = replace(self.params, seed=self.params.seed * 1_000_003 + self.rounds)
        self.rounds += 1
        samples = self.engine.generate([list(p.prompt_ids) for p in prompts], params)
        k = self.params.n
        scores, failures = _broadcast_from_rank0(self.score_fn(prompts, samples) if _is_rank0() else None)
        groups = [Group(p, samples[i * k:(i + 1) * k], scores[i * k:(i + 1) * k]) for i, p in enumerate(prompts)]
        kept = self._filter(groups, metrics)
        self.buffer.extend(kept)
        metrics["rollout/accuracy_before_filter"].extend(scores)
        metrics["rollout/response_length"].extend(len(s.response_ids) for s in samples)
        metrics["rollout/truncated"].extend(float(s.finish_reason == "length") for s in samples)
        for reason, count in failures.items():
            metrics[f"verifier/failures_{reason}"].append(count)

    def _filter(self, groups: list[Group], metrics: dict) -> list[Group]:
        if not self.filter_enabled:
            return groups
        k = self.params.n
        result = filter_groups(
            torch.tensor([s for g in groups for s in g.scores], dtype=torch.float32),
            torch.tensor([s.finish_reason == "length" for g in groups for s in g.samples]),
            group_size=k, acc_low=self.acc_low, acc_high=self.acc_high, drop_truncated=self.drop_truncated,
        )
        for reason in result.reasons:
            if reason is not None:
                metrics[f"filter/dropped_{reason.split(':')[0].split(' ')[0]}"].append(1.0)
        return [g for g, keep in zip(groups, result.keep.tolist()) if keep]

    def next_batch(self) -> tuple[list[Group], dict[str, float]]:
        """Up to `batch_prompts` kept groups (fewer only after `max_rounds` draws) and metrics."""
        from collections import defaultdict

        lists: dict[str, list] = defaultdict(list)
        rounds = 0
        while len(self.buffer) < self.batch_prompts and rounds < self.max_rounds:
            self._round(lists)
            rounds += 1
        taken, self.buffer = self.buffer[: self.batch_prompts], self.buffer[self.batch_prompts:]
        metrics = {k: sum(v) / len(v) for k, v in lists.items() if not k.startswith(("filter/", "verifier/"))}
        metrics.update({k: float(sum(v)) for k, v in lists.items() if k.startswith(("filter/", "verifier/"))})
        metrics["rollout/rounds"] = float(rounds)
        metrics["rollout/kept_groups"] = float(len(taken))
        metrics["rollout/buffered_groups"] = float(len(self.buffer))
        if taken:
            metrics["rollout/accuracy_after_filter"] = sum(s for g in taken for s in g.scores) / sum(
                len(g.scores) for g in taken)
        return taken, metrics


def groups_to_state(groups: list[Group]) -> list[dict]:
    """JSON-ready form of buffered groups, for the training checkpoint."""
    return [{"record": asdict(g.prompt.record), "prompt_ids": list(g.prompt.prompt_ids),
             "samples": [asdict(s) for s in g.samples], "scores": list(g.scores)} for g in groups]


def groups_from_state(state: list[dict]) -> list[Group]:
    groups = []
    for item in state:
        record = dict(item["record"], messages=tuple(item["record"]["messages"]))
        prompt = TokenizedPrompt(PromptRecord(**record), tuple(item["prompt_ids"]))
        groups.append(Group(prompt, [Sample(**s) for s in item["samples"]], list(item["scores"])))
    return groups


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
