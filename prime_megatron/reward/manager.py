"""Score a batch of rollouts with the rule verifiers, in parallel, never stalling.

`RewardManager(num_workers=N).score(tasks)` keeps N long-lived worker processes
(this module run as `python -m prime_megatron.reward.manager`) and feeds them
one task at a time from N threads. Each call has a deadline; a worker that
misses it (sympy stuck on an adversarial answer) or dies is SIGKILLed and
restarted, and its sample scores 0 with the reason counted in
`ScoreResult.failures` and logged. Scores come back in input order.

Workers are separate interpreters, not forks: the bound must hold on any thread
of any process (SIGALRM-based timeouts only work on a main thread), and a
restart does not copy the trainer's memory. `call_bounded` gives the same
protection to a single call (`grade_math`). Left out: retries (a verifier that
timed out once would time out again) and GPU-side verifiers.
"""
from __future__ import annotations

import logging
import os
import pickle
import queue
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<I")
_STARTUP_TIMEOUT_S = 120.0  # importing sympy on a loaded 2-core machine can take tens of seconds
_WORKER_MEMORY_BYTES = 4 << 30  # a runaway sympy simplification dies with MemoryError, not the host
_KINDS = ("math", "code")


@dataclass(frozen=True)
class VerifyTask:
    kind: str  # "math" | "code"
    response: str
    ground_truth: str | dict

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"VerifyTask.kind must be one of {_KINDS}, got {self.kind!r}")


@dataclass
class Outcome:
    score: float
    reasons: list[str] = field(default_factory=list)  # why (part of) the score was lost to a failure


@dataclass
class ScoreResult:
    scores: list[float]
    failures: Counter


def compute_task_outcome(kind: str, response: str, ground_truth, options: dict) -> Outcome:
    """Grade one task in this process (what a worker runs); verifier exceptions become reasons."""
    try:
        if kind == "math":
            from prime_megatron.reward.math import compute_math_score

            return Outcome(compute_math_score(response, ground_truth))
        from prime_megatron.reward.code import run_code_tests

        result = run_code_tests(response, ground_truth, timeout_s=options["code_timeout_s"],
                                max_cases=options["code_max_cases"])
        failed = [f"code_case_{s}" for s in result.statuses if s not in ("pass", "wrong")]
        return Outcome(result.score, failed)
    except Exception as exc:  # a bad ground truth or a grader bug must not kill the batch
        return Outcome(0.0, [f"{kind}_error:{type(exc).__name__}"])


class _Worker:
    """One verifier interpreter behind a pipe; restarted after a timeout or a crash."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "prime_megatron.reward.manager"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        if self._receive(time.monotonic() + _STARTUP_TIMEOUT_S) != "ready":
            self.close()
            raise RuntimeError("reward worker failed to start (see its stderr above)")

    def call(self, kind: str, response: str, ground_truth, options: dict, timeout_s: float) -> Outcome:
        if self._proc is None:
            self._start()
        try:
            payload = pickle.dumps((kind, response, ground_truth, options))
            self._proc.stdin.write(_HEADER.pack(len(payload)) + payload)
            self._proc.stdin.flush()
            reply = self._receive(time.monotonic() + timeout_s)
        except (BrokenPipeError, EOFError):
            reply = None
        if isinstance(reply, Outcome):
            return reply
        self.close()  # timed out or died: a fresh interpreter for the next task
        return Outcome(0.0, [f"{kind}_{'timeout' if reply == 'timeout' else 'crash'}"])

    def _receive(self, deadline: float):
        """Next message, 'timeout' past the deadline, or None at EOF."""
        header = self._read_exact(_HEADER.size, deadline)
        if not isinstance(header, bytes):
            return header
        body = self._read_exact(_HEADER.unpack(header)[0], deadline)
        return pickle.loads(body) if isinstance(body, bytes) else body

    def _read_exact(self, size: int, deadline: float):
        fd, data = self._proc.stdout.fileno(), b""
        while len(data) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return "timeout"
            chunk = os.read(fd, size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def close(self) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # the group: a code task's sandboxes go too
            except ProcessLookupError:
                pass
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                try:
                    pipe.close()
                except BrokenPipeError:  # the worker died with unread input still buffered
                    pass
            self._proc = None


class RewardManager:
    """Parallel, deadline-bounded scoring of `VerifyTask`s."""

    def __init__(self, num_workers: int = 2, *, math_timeout_s: float = 5.0, code_timeout_s: float = 5.0,
                 code_max_cases: int = 10):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.math_timeout_s = math_timeout_s
        self.options = {"code_timeout_s": code_timeout_s, "code_max_cases": code_max_cases}
        # Each case has its own sandbox wall limit; this outer deadline only catches a stuck worker.
        self.code_deadline_s = code_max_cases * (code_timeout_s + 1.0) + 10.0
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for _ in range(num_workers):
            self._idle.put(_Worker())
        self._pool = ThreadPoolExecutor(num_workers, thread_name_prefix="reward")

    def _score_one(self, task: VerifyTask) -> Outcome:
        worker = self._idle.get()
        try:
            timeout = self.math_timeout_s if task.kind == "math" else self.code_deadline_s
            return worker.call(task.kind, task.response, task.ground_truth, self.options, timeout)
        finally:
            self._idle.put(worker)

    def score(self, samples: list[VerifyTask]) -> ScoreResult:
        outcomes = list(self._pool.map(self._score_one, samples))
        failures = Counter(reason for outcome in outcomes for reason in outcome.reasons)
        if failures:
            logger.warning("reward failures in a batch of %d: %s", len(samples), dict(failures))
        return ScoreResult([o.score for o in outcomes], failures)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        while not self._idle.empty():
            self._idle.get().close()

    def __enter__(self) -> "RewardManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_local = threading.local()


def call_bounded(kind: str, response: str, ground_truth, *, timeout_s: float,
                 code_timeout_s: float = 5.0, code_max_cases: int = 10) -> Outcome:
    """One deadline-bounded verification on this thread's own worker process."""
    worker = getattr(_local, "worker", None)
    if worker is None:
        worker = _local.worker = _Worker()
    options = {"code_timeout_s": code_timeout_s, "code_max_cases": code_max_cases}
    return worker.call(kind, response, ground_truth, options, timeout_s)


def _worker_main() -> None:
    """Serve tasks from stdin until EOF (the parent closed the pipe or died)."""
    # Slurm signals every process of a job step on preemption (USR1 via --signal, then TERM).
    # The trainer answers by checkpointing and then closes these workers itself.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice: ours is outside
    resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
    import prime_megatron.reward.math  # noqa: F401  (pay the sympy import before reporting ready)
    import math_verify  # noqa: F401

    out, inp = sys.stdout.buffer, sys.stdin.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the reply stream

    def send(message) -> None:
        body = pickle.dumps(message)
        out.write(_HEADER.pack(len(body)) + body)
        out.flush()

    send("ready")
    while header := inp.read(_HEADER.size):
        kind, response, ground_truth, options = pickle.loads(inp.read(_HEADER.unpack(header)[0]))
        send(compute_task_outcome(kind, response, ground_truth, options))


if __name__ == "__main__":
    # Run the imported module's copy, so replies pickle as prime_megatron.reward.manager.Outcome.
    from prime_megatron.reward.manager import _worker_main as _imported_main

    _imported_main()
