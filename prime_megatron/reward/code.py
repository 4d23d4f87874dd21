"""Code outcome reward: the fraction of test cases a generated program passes.

`grade_code(response, tests)` takes the model's response (prose plus a markdown
code block, or bare code) and the Eurus-2-RL-Data ground truth, a JSON string or
dict `{"inputs": [...], "outputs": [...]}` with an optional `fn_name`:

- without `fn_name`, each input is fed to the program's stdin and its stdout is
  compared with the output line by line, ignoring the amount of whitespace;
- with `fn_name` (LeetCode style), the program is imported and
  `Solution().fn_name(*args)` (or a top-level `fn_name`) is called; the JSON of
  the return value is compared with the output.

Every case runs in its own sandboxed process (`sandbox.py`; one sandbox start-up per
program), so a crash, hang or `sys.exit()` costs only that case. Left out: special judges (problems accepting
several answers) and per-problem time limits; the Eurus data has neither.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from prime_megatron.reward.sandbox import RunResult, SandboxLimits, run_sandboxed

_CODE_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
# Absolute tolerance for float return values of call-based problems: judges of these
# problems accept answers within 1e-5, and JSON round-tripping loses nothing coarser.
_FLOAT_TOL = 1e-6


@dataclass(frozen=True)
class CodeTests:
    inputs: list
    outputs: list
    fn_name: str | None = None


@dataclass
class CodeResult:
    passed: int
    total: int
    statuses: list[str] = field(default_factory=list)  # per case: pass | wrong | timeout | error | ...

    @property
    def score(self) -> float:
        return self.passed / self.total if self.total else 0.0


def parse_code_tests(tests) -> CodeTests:
    """Validate the ground truth: JSON string or dict with equal-length `inputs`/`outputs`."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as exc:
            raise ValueError(f"code ground truth is not valid JSON: {exc}") from exc
    if not isinstance(tests, dict):
        raise ValueError(f"code ground truth must be a dict or JSON object, got {type(tests).__name__}")
    for key in ("inputs", "outputs"):
        if not isinstance(tests.get(key), list):
            raise ValueError(f"code ground truth needs a list under {key!r}, got {type(tests.get(key)).__name__}")
    if len(tests["inputs"]) != len(tests["outputs"]):
        raise ValueError(
            f"code ground truth has {len(tests['inputs'])} inputs but {len(tests['outputs'])} outputs")
    fn_name = tests.get("fn_name") or None
    if fn_name is not None and not isinstance(fn_name, str):
        raise ValueError(f"code ground truth 'fn_name' must be a string, got {type(fn_name).__name__}")
    return CodeTests(tests["inputs"], tests["outputs"], fn_name)


def extract_program(response: str) -> str:
    """The last fenced code block of the response, or the whole response if it has none."""
    blocks = _CODE_BLOCK.findall(response)
    return blocks[-1] if blocks else response


def _as_text(value) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def compute_stdout_match(actual: str, expected: str) -> bool:
    """Equal line by line after splitting each line on whitespace; blank lines ignored."""
    def tokens(text: str) -> list[list[str]]:
        return [line.split() for line in text.splitlines() if line.strip()]
    return tokens(actual) == tokens(expected)


def compute_value_match(actual, expected) -> bool:
    """Structural equality of JSON values; floats within `_FLOAT_TOL`; tuples are lists."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(actual, expected, rel_tol=0.0, abs_tol=_FLOAT_TOL)
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(map(compute_value_match, actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(compute_value_match(actual[k], expected[k]) for k in actual)
    return actual == expected


def _judge_call(run: RunResult, expected) -> str:
    if run.status != "ok":
        return run.status
    try:
        value = json.loads(run.stdout)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "wrong"
    # Eurus/TACO call-based outputs are usually wrapped in a one-element list.
    ok = compute_value_match(value, expected) or (
        isinstance(expected, list) and len(expected) == 1 and compute_value_match(value, expected[0]))
    return "pass" if ok else "wrong"


def _judge_stdin(run: RunResult, expected) -> str:
    if run.status != "ok":
        return run.status
    actual = run.stdout.decode("utf-8", "replace")
    return "pass" if compute_stdout_match(actual, _as_text(expected)) else "wrong"


def run_code_tests(response: str, tests, *, timeout_s: float = 5.0, max_cases: int = 10,
                   limits: SandboxLimits | None = None) -> CodeResult:
    """Run the first `max_cases` cases; each case gets `timeout_s` of wall and CPU time."""
    spec = parse_code_tests(tests)
    program = extract_program(response)
    limits = limits or SandboxLimits(wall_s=timeout_s, cpu_s=max(1, math.ceil(timeout_s)))
    inputs, outputs = spec.inputs[:max_cases], spec.outputs[:max_cases]
    if spec.fn_name is None:
        runs = run_sandboxed(program, [_as_text(x) for x in inputs], limits=limits)
        statuses = [_judge_stdin(run, expected) for run, expected in zip(runs, outputs)]
    else:
        args = [x if isinstance(x, list) else [x] for x in inputs]
        runs = run_sandboxed(program, args, fn_name=spec.fn_name, limits=limits)
        statuses = [_judge_call(run, expected) for run, expected in zip(runs, outputs)]
    return CodeResult(statuses.count("pass"), len(inputs), statuses)


def grade_code(program: str, tests, *, timeout_s: float = 5.0, max_cases: int = 10) -> float:
    """Fraction of the first `max_cases` test cases passed, in [0, 1]."""
    return run_code_tests(program, tests, timeout_s=timeout_s, max_cases=max_cases).score
