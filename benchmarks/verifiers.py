"""Verifier throughput: math samples/s and code test cases/s, batches of 64 and 1024.

    OMP_NUM_THREADS=1 python benchmarks/verifiers.py [--batches 64 1024] [--workers 2] [--cases 2]

Each batch goes through RewardManager.score (worker processes, deadlines, sandbox), the
way the trainer calls it. Side by side, in the same run:
  math   the same samples graded by compute_math_score in this process, one thread, no
         deadline: the cost of the worker round trip and of parallelism;
  code   the same programs run as a bare `python -I solution.py` subprocess with no
         namespaces, uid or rlimits: the cost of the sandbox. Timed on the first 64
         programs only (its cost is linear in the number of cases) and reported per case.
Every sample is distinct (numbers vary with the index) so math-verify's parse cache
does not flatter the math numbers. Scores are checked against the expected values.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prime_megatron.reward.code import compute_stdout_match  # noqa: E402
from prime_megatron.reward.manager import RewardManager, VerifyTask  # noqa: E402
from prime_megatron.reward.math import compute_math_score  # noqa: E402

# (response template, ground truth template, equivalent?) in the forms policies produce; {n} varies.
MATH_FORMS = [
    ("so the answer is \\boxed{{{n}}}.", "{n}", True),
    ("Hence \\boxed{{\\frac{{{n}}}{{4}}}}", "{q}", True),
    ("[ASSESS]\nfind it\n[ADVANCE]\nx={n}\n[OUTPUT]\nThe answer is $x = {n}$.", "{n}", True),
    ("The answer is {n1}.", "{n}", False),
    ("\\boxed{{({n}, {n1})}}", "({n},{n1})", True),
    ("\\boxed{{x^2+{t}x+{n}}}", "x^2+{t}x+{n1}", False),
    ("\\boxed{{\\sqrt{{{s}}}}}", "{r}\\sqrt{{2}}", True),
    ("\\boxed{{[{n}, \\infty)}}", "[{n},\\infty)", True),
]

STDIN_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
CALL_PROGRAM = "class Solution:\n    def addOne(self, x: int) -> int:\n        return x + 1\n"


def math_tasks(batch: int) -> tuple[list[VerifyTask], list[float]]:
    tasks, expected = [], []
    for i in range(batch):
        response, truth, ok = MATH_FORMS[i % len(MATH_FORMS)]
        values = {"n": i + 2, "n1": i + 3, "q": (i + 2) / 4, "t": 2 * i + 1, "s": 2 * (i + 1) ** 2, "r": i + 1}
        tasks.append(VerifyTask("math", response.format(**values), truth.format(**values)))
        expected.append(1.0 if ok else 0.0)
    return tasks, expected


def code_tasks(batch: int, cases: int) -> tuple[list[VerifyTask], list[float]]:
    tasks, expected = [], []
    for i in range(batch):
        xs = range(i, i + cases)
        if i % 2 == 0:
            tests = {"inputs": [f"{x} {i}\n" for x in xs], "outputs": [f"{x + i}\n" for x in xs]}
            tasks.append(VerifyTask("code", f"```python\n{STDIN_PROGRAM}```", tests))
        else:  # call-based, last case deliberately wrong so the score is partial
            outputs = [[x + 1] for x in xs][:-1] + [[-1]]
            tests = {"fn_name": "addOne", "inputs": [[x] for x in xs], "outputs": outputs}
            tasks.append(VerifyTask("code", CALL_PROGRAM, tests))
        expected.append(1.0 if i % 2 == 0 else (cases - 1) / cases)
    return tasks, expected


def bare_stdin_cases_per_s(tasks: list[VerifyTask]) -> float:
    """Run the stdin programs as plain subprocesses: the floor any sandbox builds on."""
    runs, start = 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "solution.py")
        with open(path, "w") as f:
            f.write(STDIN_PROGRAM)
        for task in tasks:
            if task.ground_truth.get("fn_name"):
                continue
            for case_in, case_out in zip(task.ground_truth["inputs"], task.ground_truth["outputs"]):
                out = subprocess.run([sys.executable, "-I", path], input=case_in, capture_output=True,
                                     text=True, timeout=10).stdout
                assert compute_stdout_match(out, case_out)
                runs += 1
    return runs / (time.perf_counter() - start)


def timed_score(manager: RewardManager, tasks, expected) -> float:
    start = time.perf_counter()
    scores = manager.score(tasks).scores
    seconds = time.perf_counter() - start
    wrong = [i for i, (s, e) in enumerate(zip(scores, expected)) if abs(s - e) > 1e-9]
    if wrong:
        raise AssertionError(f"unexpected scores at rows {wrong[:5]}: {[scores[i] for i in wrong[:5]]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", type=int, default=2, help="test cases per code sample")
    args = parser.parse_args()
    rows = []
    with RewardManager(num_workers=args.workers) as manager:
        manager.score(math_tasks(args.workers)[0])  # start the workers (sympy import) outside the timing
        for batch in args.batches:
            tasks, expected = math_tasks(batch)
            seconds = timed_score(manager, tasks, expected)
            start = time.perf_counter()
            assert [compute_math_score(t.response, t.ground_truth) for t in tasks] == expected
            direct = batch / (time.perf_counter() - start)
            rows.append(("math samples", batch, batch, seconds, batch / seconds, "in-process, 1 thread", direct))
        for batch in args.batches:
            tasks, expected = code_tasks(batch, args.cases)
            seconds = timed_score(manager, tasks, expected)
            n = batch * args.cases
            bare = bare_stdin_cases_per_s(tasks[:64])
            rows.append(("code cases", batch, n, seconds, n / seconds, "bare subprocess, serial", bare))
    print(f"RewardManager with {args.workers} workers on {os.cpu_count()} CPUs; code: {args.cases} cases/sample")
    print("| verifier | batch | items | seconds | items/s | baseline | baseline items/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch, n, seconds, rate, base_name, base in rows:
        print(f"| {name} | {batch} | {n} | {seconds:.2f} | {rate:.1f} | {base_name} | {base:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
