"""RewardManager: parallel scores in input order; a hanging or crashing sample costs only itself."""
import os
import time

import pytest

from prime_megatron.reward.code import grade_code
from prime_megatron.reward.manager import RewardManager, VerifyTask
from prime_megatron.reward.math import compute_math_score

ECHO_TESTS = {"inputs": ["a\n", "b\n"], "outputs": ["a\n", "b\n"]}


class _KillsWorker:
    """Unpickling this calls os._exit in the worker: a verifier process dying mid-task."""

    def __reduce__(self):
        return os._exit, (3,)


@pytest.fixture(scope="module")
def manager():
    with RewardManager(num_workers=2, math_timeout_s=3.0, code_timeout_s=2.0) as m:
        yield m


def test_scores_in_input_order_match_direct_grading(manager):
    math_rows = [("\\boxed{\\frac12}", "0.5"), ("\\boxed{3}", "4"), ("The answer is 10.", "10"), ("x", "1"),
                 ("\\boxed{(1,2)}", "(1,2)"), ("\\boxed{2\\sqrt2}", "\\sqrt8")]
    code_rows = [("print(input())", ECHO_TESTS), ("print('a')", ECHO_TESTS), ("print(1/0)", ECHO_TESTS)]
    tasks = [VerifyTask("math", r, gt) for r, gt in math_rows] + [VerifyTask("code", p, t) for p, t in code_rows]
    tasks = tasks[::2] + tasks[1::2]  # interleave kinds so workers finish out of order
    # Reference: the same verifiers called directly in this process, one by one.
    expected = [compute_math_score(t.response, t.ground_truth) if t.kind == "math"
                else grade_code(t.response, t.ground_truth) for t in tasks]
    result = manager.score(tasks)
    assert result.scores == expected
    assert sorted(set(expected)) == [0.0, 0.5, 1.0]  # the reference is not trivially constant


def test_hanging_and_crashing_samples_score_zero_and_are_counted(manager):
    good = VerifyTask("math", "\\boxed{7}", "7")
    tasks = [good, VerifyTask("math", "\\boxed{9^{9^{9^{9}}}}", "1"), good,
             VerifyTask("code", "print(1)", {"inputs": [_KillsWorker()], "outputs": ["1"]}), good,
             VerifyTask("math", "\\boxed{1}", ""), VerifyTask("code", "while True: pass", ECHO_TESTS), good]
    start = time.monotonic()
    result = manager.score(tasks)
    elapsed = time.monotonic() - start
    assert result.scores == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert result.failures == {"math_timeout": 1, "code_crash": 1, "math_error:ValueError": 1,
                               "code_case_timeout": 2}
    # Critical path on 2 workers: the 3 s math deadline, two 2 s code cases, and two worker restarts
    # (~2 s each to import sympy on a loaded machine). A stalled batch would exceed it by far.
    assert elapsed < 20.0
    # The workers came back: a later batch is graded normally.
    assert manager.score([good, good]).scores == [1.0, 1.0]


def test_task_kind_is_checked():
    with pytest.raises(ValueError, match="kind"):
        VerifyTask("proof", "r", "gt")
    with pytest.raises(ValueError, match="num_workers"):
        RewardManager(num_workers=0)
