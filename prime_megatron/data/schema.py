"""Validation of one prompt record in the Eurus-2-RL-Data schema, and verifier routing.

A record looks like::

    {"data_source": "numina_olympiads",
     "prompt": [{"role": "system", "content": ...}, {"role": "user", "content": ...}],
     "ability": "math",
     "reward_model": {"ground_truth": "42", "style": "rule"},
     "extra_info": {"split": "train", "index": 7}}

Every check names the file, the row and the field that failed. Code ground truths
(a JSON string of test cases in Eurus-2) are checked to be valid JSON and passed on
parsed; their meaning is the code verifier's business. Deliberately left out:
tokenisation (see ``loader.py``) and any repair of malformed records.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

VerifierKind = Literal["math", "code"]

# data_source values of Eurus-2-RL-Data and common code sets, for records without an ability.
_CODE_SOURCES = ("taco", "apps", "codecontests", "code_contests", "codeforces", "leetcode",
                 "livecodebench", "kodcode", "primeintellect", "humaneval", "mbpp")
_MATH_SOURCES = ("numina", "math", "gsm8k", "aime", "amc", "olympiad", "arithmetic")
_ROLES = ("system", "user", "assistant")


class DataFormatError(ValueError):
    """A dataset record is malformed; the message names the file, row and field."""

    def __init__(self, file: str, row: int, field_name: str, problem: str):
        super().__init__(f"{file}: row {row}: field '{field_name}': {problem}")
        self.file, self.row, self.field = file, row, field_name


@dataclass(frozen=True)
class PromptRecord:
    """One validated prompt. ``row`` is its 0-based position in ``file``."""
    file: str
    row: int
    data_source: str
    messages: tuple[dict, ...]
    ability: str
    kind: VerifierKind
    ground_truth: Any  # str for math; parsed JSON (dict/list) for code
    style: str = "rule"
    extra_info: dict = field(default_factory=dict)


def route_verifier(ability: str | None, data_source: str | None) -> VerifierKind | None:
    """Pick the verifier: by ``ability`` when it says math/code, else by ``data_source`` name."""
    ability = (ability or "").strip().lower()
    if ability in ("math", "code"):
        return ability  # type: ignore[return-value]
    if ability in ("coding", "programming"):
        return "code"
    source = (data_source or "").strip().lower()
    if any(name in source for name in _CODE_SOURCES):
        return "code"
    if any(name in source for name in _MATH_SOURCES):
        return "math"
    return None


def check_messages(value: Any, fail) -> tuple[dict, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        fail("a non-empty list of {role, content} messages", value)
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not {"role", "content"} <= set(msg):
            fail(f"message {i} to be a mapping with 'role' and 'content'", msg)
        if msg["role"] not in _ROLES:
            fail(f"message {i} role to be one of {_ROLES}", msg["role"])
        if not isinstance(msg["content"], str):
            fail(f"message {i} content to be a string", msg["content"])
        out.append({"role": msg["role"], "content": msg["content"]})
    if out[-1]["role"] != "user":
        fail("the last message to come from the user (the model answers it)", out[-1]["role"])
    return tuple(out)


def _check_ground_truth(value: Any, kind: VerifierKind, fail_gt) -> Any:
    if kind == "math":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value.strip():
            fail_gt("a non-empty answer string", value)
        return value
    if isinstance(value, (dict, list)):
        return value
    if not isinstance(value, str):
        fail_gt("a JSON string of test cases", value)
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        fail_gt(f"valid JSON test cases ({err.msg} at char {err.pos})", value[:80])


def field_failure(file: str, row: int):
    """fail_at(field)(expected, got) raises a DataFormatError naming file, row and field."""

    def fail_at(name: str):
        def fail(expected: str, got: Any) -> None:
            raise DataFormatError(file, row, name, f"expected {expected}, got {_short(got)}")
        return fail
    return fail_at


def parse_record(raw: Any, *, file: str, row: int, prompt_key: str = "prompt",
                 ability_key: str = "ability", data_source_key: str = "data_source") -> PromptRecord:
    """Validate one raw record (a mapping) and return it typed; raise DataFormatError otherwise."""
    fail_at = field_failure(file, row)

    if not isinstance(raw, dict):
        fail_at("<record>")("a mapping", raw)
    for required in (prompt_key, "reward_model"):
        if raw.get(required) is None:
            raise DataFormatError(file, row, required, "missing")
    messages = check_messages(raw[prompt_key], fail_at(prompt_key))
    data_source = raw.get(data_source_key) or ""
    ability = raw.get(ability_key) or ""
    for name, value in ((data_source_key, data_source), (ability_key, ability)):
        if not isinstance(value, str):
            fail_at(name)("a string", value)
    kind = route_verifier(ability, data_source)
    if kind is None:
        raise DataFormatError(file, row, ability_key, f"cannot route ability {ability!r} / "
                              f"{data_source_key} {data_source!r} to the math or code verifier")
    reward = raw["reward_model"]
    if not isinstance(reward, dict) or reward.get("ground_truth") is None:
        raise DataFormatError(file, row, "reward_model.ground_truth", "missing")
    truth = _check_ground_truth(reward["ground_truth"], kind, fail_at("reward_model.ground_truth"))
    extra = raw.get("extra_info") or {}
    if not isinstance(extra, dict):
        fail_at("extra_info")("a mapping", extra)
    return PromptRecord(file=file, row=row, data_source=data_source, messages=messages, ability=ability,
                        kind=kind, ground_truth=truth, style=str(reward.get("style") or "rule"),
                        extra_info=dict(extra))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
