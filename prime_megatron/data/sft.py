"""Supervised warm-up pairs: a chat prompt plus the assistant response to imitate.

A row is ``{"prompt": [{role, content}, ...], "response": "..."}`` (jsonl or
parquet). The prompt is encoded exactly as for RL (chat template, generation
prompt), and the response is the assistant's text followed by the tokenizer's EOS,
so the SFT model learns to stop where the rollout engine stops it.

Deliberately left out: multi-turn conversations and packing of several pairs
into one sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from prime_megatron.data.loader import encode_chat_prompt, read_raw_rows
from prime_megatron.data.schema import DataFormatError, check_messages, field_failure


@dataclass(frozen=True)
class SFTExample:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]  # ends with the EOS token


def _parse_pair(raw: Any, *, file: str, row: int) -> tuple[tuple[dict, ...], str]:
    fail = field_failure(file, row)
    if not isinstance(raw, dict):
        fail("<record>")("a mapping", raw)
    if raw.get("prompt") is None:
        raise DataFormatError(file, row, "prompt", "missing")
    messages = check_messages(raw["prompt"], fail("prompt"))
    response = raw.get("response")
    if not isinstance(response, str) or not response:
        fail("response")("a non-empty string", response)
    return messages, response


def load_sft_examples(files: Sequence[str | Path], tokenizer: Any, *, max_len: int) -> tuple[list[SFTExample], int]:
    """Tokenised pairs from ``files`` and the number skipped for exceeding ``max_len`` tokens."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; SFT responses must end with one")
    if isinstance(files, (str, Path)):
        files = [files]
    examples, skipped = [], 0
    for path in files:
        for row, raw in enumerate(read_raw_rows(path)):
            messages, response = _parse_pair(raw, file=str(path), row=row)
            prompt_ids = encode_chat_prompt(tokenizer, messages)
            response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
            response_ids.append(tokenizer.eos_token_id)
            if len(prompt_ids) + len(response_ids) > max_len:
                skipped += 1
                continue
            examples.append(SFTExample(tuple(prompt_ids), tuple(response_ids)))
    return examples, skipped
