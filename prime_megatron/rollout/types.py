"""What a rollout engine takes and returns, and the protocol every engine implements.

`SamplingParams` and `Sample` are the only things that cross the rollout boundary: token
ids in, token ids + per-token sampler log-probs + a finish reason out. Text, chat templates
and rewards live elsewhere (data/, reward/). Left out: streaming, per-prompt sampling
params, top-k and penalties (PRIME samples with temperature/top-p only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: `n` responses per prompt at `temperature` with nucleus `top_p`.

    A response ends after `max_new_tokens` tokens ("length") or on the first token in
    `stop_token_ids` ("stop"; the stop token is kept as the last response token so the
    trainer scores it too). `temperature == 0` means greedy.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Sample:
    """One response. `logprobs[j]` = log p(response_ids[j] | prompt + response_ids[:j]) under
    the sampled model at temperature 1 (before temperature / top-p), see each engine."""

    prompt_index: int
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason

    def __post_init__(self):
        if len(self.response_ids) != len(self.logprobs):
            raise ValueError(
                f"Sample(prompt_index={self.prompt_index}): {len(self.response_ids)} response ids "
                f"but {len(self.logprobs)} logprobs"
            )
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"Sample.finish_reason must be 'stop' or 'length', got {self.finish_reason!r}")


@runtime_checkable
class RolloutEngine(Protocol):
    """A sampler the RL loop can drive, refresh with new weights, and park during training."""

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> list[Sample]:
        """Return P*n samples; the n samples of prompt p are adjacent, prompts in order."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named full tensors (any subset of the model, any number of calls)."""
        ...

    def sleep(self) -> None:
        """Give back accelerator memory (weights + KV cache) while training runs."""
        ...

    def wake(self) -> None:
        """Take the memory back before the next generate()."""
        ...


def check_prompts(prompt_token_ids: list[list[int]], *, vocab_size: int | None = None) -> None:
    """Reject empty batches, empty prompts and out-of-vocabulary ids, naming the prompt."""
    if len(prompt_token_ids) == 0:
        raise ValueError("prompt_token_ids is empty: pass at least one prompt")
    for p, ids in enumerate(prompt_token_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt_token_ids[{p}] is empty: every prompt needs at least one token")
        if vocab_size is not None:
            bad = [t for t in ids if not 0 <= int(t) < vocab_size]
            if bad:
                raise ValueError(
                    f"prompt_token_ids[{p}] has token ids outside [0, {vocab_size}): {bad[:5]}"
                )
