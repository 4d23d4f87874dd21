"""Math outcome reward: 1.0 if the response's final answer equals the ground truth, else 0.0.

Three steps:
1. `extract_answer` finds the final answer the way Eurus-2 prompts ask for it:
   the last `\\boxed{...}` / `\\fbox{...}` (nested braces), else the text after
   the last `[OUTPUT]` action (its "answer is ..." if present, else its last
   line), else the last "The answer is ...".
2. `normalize_answer` removes what competition graders ignore: `\\left`/`\\right`,
   `\\dfrac`, spacing commands, degrees, percent, trailing units in `\\text{}`,
   thousands separators, a leading `x =`, surrounding `$` and a final period.
3. math-verify (sympy) decides equivalence: fractions vs decimals, intervals,
   tuples and sets, matrices, expressions equal after simplification.

`compute_math_score` is unbounded: sympy can hang on adversarial input, so the
trainer calls `grade_math`, which runs it in a worker process killed at
`timeout_s` (a timeout scores 0 and is counted by the caller; see manager.py).
math-verify's own timeout uses SIGALRM, which works only on a main thread, so
it is switched off here. Left out: answers that need the question to be read
(multiple choice letters mapped to values, "none of the above").
"""
from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ASSIGNMENT = re.compile(r"^\s*[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*([^=]+)$")
_TRAILING_TEXT = re.compile(r"\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z][a-zA-Z\s.]*\}\s*$")
_INLINE_MATH = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_REMOVALS = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "^{\\circ}", "^\\circ",
             "\\circ", "°", "\\%", "%", "\\$", "{,}")


def _balanced_group(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start] == '{', or None if unbalanced."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` (or `\\boxed 5`), braces balanced."""
    starts = [(text.rfind(cmd), cmd) for cmd in _BOX_COMMANDS]
    pos, cmd = max(starts)
    if pos < 0:
        return None
    rest = pos + len(cmd)
    while rest < len(text) and text[rest] == " ":
        rest += 1
    if rest < len(text) and text[rest] == "{":
        return _balanced_group(text, rest)
    match = re.match(r"[^\s$]+", text[rest:])  # "\boxed 5" form
    return match.group(0) if match else None


def _answer_phrase(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    return matches[-1].group(1).strip() if matches else None


def extract_answer(response: str) -> str | None:
    """The final answer of a response, or None when it states none."""
    boxed = extract_boxed(response)
    if boxed is not None:
        return boxed
    if "[OUTPUT]" in response:
        section = response.rsplit("[OUTPUT]", 1)[1]
        phrase = _answer_phrase(section)
        if phrase is not None:
            return phrase
        lines = [line.strip() for line in section.strip().splitlines() if line.strip()]
        return _last_value(lines[-1]) if lines else None
    return _answer_phrase(response)


def _last_value(line: str) -> str:
    """The last $...$ formula of a sentence, else its last number, else the whole line."""
    formulas = [m.group(1) or m.group(2) for m in _INLINE_MATH.finditer(line)]
    if formulas:
        return formulas[-1]
    numbers = _NUMBER.findall(line)
    return numbers[-1] if numbers else line


def normalize_answer(answer: str) -> str:
    """Strip formatting that does not change the value (see the module docstring)."""
    text = answer.strip()
    while text.endswith((".", "$")) or text.startswith("$"):
        text = text.strip("$").rstrip(".").strip()
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for token in _REMOVALS:
        text = text.replace(token, "")
    text = re.sub(r"\s*(?:degrees|percent)\s*$", "", text)
    unit = _TRAILING_TEXT.search(text)
    if unit is not None and unit.start() > 0:  # "5 \text{ cm}" is 5, but "\text{east}" is the answer
        text = text[:unit.start()]
    text = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", text)
    assignment = _ASSIGNMENT.match(text)
    if assignment is not None:
        text = assignment.group(1)
    text = text.strip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    return text


def _parse(text: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return parse(f"${text}$", extraction_config=config, parsing_timeout=None)


def compute_math_score(response: str, ground_truth: str) -> float:
    """1.0 if the final answer of `response` is equivalent to `ground_truth`; unbounded in time."""
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(f"math ground truth must be a non-empty string, got {ground_truth!r}")
    answer = extract_answer(response)
    if answer is None:
        return 0.0
    gold = normalize_answer(extract_boxed(ground_truth) or ground_truth)
    pred = normalize_answer(answer)
    if pred == gold:
        return 1.0
    from math_verify import verify

    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return 0.0
    return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=None) else 0.0


def grade_math(response: str, ground_truth: str, *, timeout_s: float = 5.0) -> float:
    """`compute_math_score` in a worker process; 0.0 if it exceeds `timeout_s` or crashes."""
    from prime_megatron.reward.manager import call_bounded  # manager imports this module

    return call_bounded("math", response, ground_truth, timeout_s=timeout_s).score
