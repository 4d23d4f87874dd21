"""Load prompt files (parquet or jsonl, Eurus-2-RL-Data schema) and turn them into token ids.

``load_prompt_records`` reads files with ``datasets`` and validates every row
(``schema.parse_record``). ``tokenize_prompts`` applies the tokenizer's chat
template with ``add_generation_prompt=True`` and skips, and counts, prompts longer
than ``max_prompt_len``: a truncated prompt would silently change the question.
``load_prompt_dataset`` does both.

Deliberately left out: batching and shuffling (``stream.py``), and responses
(prompt-only RL data; SFT pairs live in ``sft.py``).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from prime_megatron.data.schema import DataFormatError, PromptRecord, parse_record

SUPPORTED_SUFFIXES = (".parquet", ".jsonl", ".json")


@dataclass(frozen=True)
class TokenizedPrompt:
    record: PromptRecord
    prompt_ids: tuple[int, ...]


@dataclass
class PromptDataset:
    prompts: list[TokenizedPrompt]
    skipped_too_long: int = 0
    num_records: int = 0
    counts_by_kind: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> TokenizedPrompt:
        return self.prompts[index]


def read_raw_rows(path: str | Path) -> list[dict]:
    """All rows of one parquet/jsonl file as plain dicts, in file order."""
    import datasets  # heavy import, only when data is read

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type '{path.suffix}', expected one of {SUPPORTED_SUFFIXES}")
    if path.suffix == ".parquet":
        return list(datasets.Dataset.from_parquet(str(path), keep_in_memory=True))
    _check_jsonl_syntax(path)
    return list(datasets.Dataset.from_json(str(path), keep_in_memory=True))


def _check_jsonl_syntax(path: Path) -> None:
    """Name the row of a JSON syntax error; ``datasets`` reports only the file."""
    with path.open() as fh:
        for row, line in enumerate(l for l in fh if l.strip()):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(str(path), row, "<record>", f"invalid JSON: {err.msg}") from None
            if not isinstance(value, dict):
                raise DataFormatError(str(path), row, "<record>", f"expected a JSON object, got {type(value).__name__}")


def load_prompt_records(files: Sequence[str | Path], *, prompt_key: str = "prompt",
                        ability_key: str = "ability", data_source_key: str = "data_source") -> list[PromptRecord]:
    """Read and validate every row of ``files``, in order; the first malformed row raises."""
    if isinstance(files, (str, Path)):
        files = [files]
    if not files:
        raise ValueError("no prompt files given (data.train_files / data.val_files is empty)")
    records = []
    for path in files:
        for row, raw in enumerate(read_raw_rows(path)):
            records.append(parse_record(raw, file=str(path), row=row, prompt_key=prompt_key,
                                        ability_key=ability_key, data_source_key=data_source_key))
    return records


def encode_chat_prompt(tokenizer: Any, messages: Iterable[dict]) -> list[int]:
    """Token ids of ``messages`` under the chat template, ending with the assistant header."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat_template; "
                         "prompts need one to mark where the model's answer starts")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    # The template already wrote any BOS/special markers, so no second set is added here.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_prompts(records: Iterable[PromptRecord], tokenizer: Any, *, max_prompt_len: int) -> PromptDataset:
    """Tokenise with the chat template; prompts over ``max_prompt_len`` tokens are skipped and counted."""
    if max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be >= 1, got {max_prompt_len}")
    out = PromptDataset(prompts=[])
    for record in records:
        out.num_records += 1
        ids = encode_chat_prompt(tokenizer, record.messages)
        if len(ids) > max_prompt_len:
            out.skipped_too_long += 1
            continue
        out.prompts.append(TokenizedPrompt(record=record, prompt_ids=tuple(ids)))
        out.counts_by_kind[record.kind] += 1
    return out


def load_prompt_dataset(files: Sequence[str | Path], tokenizer: Any, *, max_prompt_len: int,
                        prompt_key: str = "prompt", ability_key: str = "ability",
                        data_source_key: str = "data_source") -> PromptDataset:
    """Read, validate and tokenise ``files``; raise if no prompt fits ``max_prompt_len``."""
    records = load_prompt_records(files, prompt_key=prompt_key, ability_key=ability_key,
                                  data_source_key=data_source_key)
    dataset = tokenize_prompts(records, tokenizer, max_prompt_len=max_prompt_len)
    if not dataset.prompts:
        raise ValueError(f"none of the {dataset.num_records} prompts in {list(map(str, files))} fits "
                         f"max_prompt_len={max_prompt_len} tokens")
    return dataset


def load_tokenizer(path: str | Path) -> Any:
    """The Hugging Face tokenizer saved in the local directory ``path`` (no network)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
