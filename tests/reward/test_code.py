"""Code grader and sandbox: scoring, then adversarial programs that must score 0 and harm nothing.

The adversarial programs run concurrently once (module fixture) to keep the suite fast;
each test then checks one program's score, duration and the machine's state afterwards.
"""
import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prime_megatron.reward.code import (
    compute_stdout_match, compute_value_match, extract_program, grade_code, parse_code_tests, run_code_tests)
from prime_megatron.reward.sandbox import _UID_BASE, SandboxLimits, run_sandboxed

# The confinement these tests check (fresh uid, RLIMIT_NPROC) is the root configuration; the
# non-root fallbacks are weaker by design (see sandbox.py's docstring).
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="sandbox confinement tests need root (fresh uid)")

ADD_STDIN = {"inputs": ["1 2\n", "10 -3\n", "0 0\n", "5 5\n"], "outputs": ["3\n", "7\n", "0\n", "10\n"]}
TWO_SUM = {"fn_name": "twoSum", "inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6], [[3, 3], 6]],
           "outputs": [[[0, 1]], [[1, 2]], [[0, 1]]]}


# ---------------------------------------------------------------- scoring of honest programs

def test_stdin_correct_wrong_partial():
    correct = "a, b = map(int, input().split())\nprint(a + b)\n"
    assert grade_code(correct, ADD_STDIN) == 1.0
    assert grade_code(correct.replace("a + b", "a - b"), json.dumps(ADD_STDIN)) == 0.25  # only "0 0" -> 0
    # "1 2" -> 3 and "0 0" -> 0 pass; "10 -3" and "5 5" print 0: half the cases.
    partial = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n"
    assert grade_code(partial, ADD_STDIN) == 0.5
    res = run_code_tests("print(3)", ADD_STDIN)
    assert (res.passed, res.total, res.statuses) == (1, 4, ["pass", "wrong", "wrong", "wrong"])


def test_call_based_class_and_function():
    solution = ("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
                "        seen = {}\n        for i, x in enumerate(nums):\n"
                "            if target - x in seen:\n                return [seen[target - x], i]\n"
                "            seen[x] = i\n")
    response = f"Here is my solution.\n```python\n{solution}```\nIt runs in O(n)."
    assert grade_code(response, TWO_SUM) == 1.0
    first_two = "def twoSum(nums, target):\n    print('debug output is ignored')\n    return (0, 1)\n"
    assert grade_code(first_two, TWO_SUM) == pytest.approx(2 / 3)  # tuple == list; case 2 wants [1, 2]
    assert grade_code("def other():\n    return 1\n", TWO_SUM) == 0.0


def test_max_cases_limits_the_denominator():
    tests = {"inputs": [f"{i}\n" for i in range(12)], "outputs": [f"{i}\n" for i in range(12)]}
    res = run_code_tests("print(input())", tests, max_cases=3)
    assert (res.passed, res.total) == (3, 3)


def test_output_comparison_rules():
    assert compute_stdout_match("1  2 \n3\n\n", "1 2\n3")
    assert not compute_stdout_match("1 2 3", "1 2\n3")
    assert not compute_stdout_match("12", "1 2")
    assert compute_value_match([1.0, [2, 3]], [1, [2, 3.0000000001]])
    assert not compute_value_match([1, 2], [2, 1])
    assert not compute_value_match(True, 1)


def test_extract_program_takes_last_block():
    text = "try:\n```python\nprint(1)\n```\nbetter:\n```py\nprint(2)\n```\n"
    assert extract_program(text) == "print(2)\n"
    assert extract_program("print(3)") == "print(3)"


@pytest.mark.parametrize("bad, key", [
    ("{not json", "JSON"), ({"inputs": [1]}, "'outputs'"), ({"inputs": [1], "outputs": [1, 2]}, "1 inputs but 2"),
    ({"inputs": [], "outputs": [], "fn_name": 3}, "fn_name")])
def test_bad_ground_truth_is_named(bad, key):
    with pytest.raises(ValueError, match=key):
        parse_code_tests(bad)


# ---------------------------------------------------------------- limits bite where intended

@needs_root
def test_limits_on_benign_programs():
    limits = SandboxLimits(wall_s=10, cpu_s=10, max_processes=8)
    forks = ("import os, time\nn = 0\nfor _ in range(20):\n    try:\n        pid = os.fork()\n"
             "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
             "    n += 1\nprint(n)\n")
    # 8 processes for the fresh uid: this one plus 7 children. The children outlive case 1 unless the
    # harness kills them; case 2 then gets the full budget again.
    assert [r.stdout for r in run_sandboxed(forks, ["", ""], limits=limits)] == [b"7\n", b"7\n"]
    alloc = "x = bytearray(int(input()))\nprint('ok')\n"
    small, large = run_sandboxed(alloc, [str(100 << 20), str(2 << 30)], limits=limits)
    assert small.stdout == b"ok\n"
    assert large.status == "error" and "MemoryError" in large.stderr_tail  # the 1 GiB address-space limit
    # Each case starts with empty scratch space: files a previous case left are gone.
    marker = "import os\nprint(os.path.exists('/tmp/m'), os.path.exists('m'))\nopen('/tmp/m', 'w'); open('m', 'w')\n"
    assert [r.stdout for r in run_sandboxed(marker, ["", ""], limits=limits)] == [b"False False\n"] * 2
    run = run_sandboxed("import sys\nprint(sys.stdin.read()[::-1])", ["abc"], limits=limits)[0]
    assert run.stdout == b"cba\n" and {"pidns", "netns", "fresh-uid", "rlimits"} <= set(run.protections)


def test_sandbox_rejects_malformed_cases():
    with pytest.raises(TypeError, match=r"cases\[1\] must be stdin text"):
        run_sandboxed("print(1)", ["", 3])
    with pytest.raises(TypeError, match=r"cases\[0\] must be a list of call arguments"):
        run_sandboxed("def f(): pass", ["x"], fn_name="f")


# ---------------------------------------------------------------- adversarial programs

TOKEN = f"prime-sandbox-{os.getpid()}-{time.time_ns()}"
TIMEOUT_S = 2.0


def _adversaries(paths: dict) -> dict:
    """name -> (program, tests). Each program prints TOKEN only if its attack succeeded."""
    victim, parent = paths["victim_pid"], os.getpid()
    expect = {"inputs": [""], "outputs": [TOKEN]}
    return {
        "infinite_loop": ("while True:\n    pass\n", expect),
        "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", expect),
        "memory": ("chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n", expect),
        "huge_print": ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", expect),
        "files": (f"""import os, glob
hits = 0
for canary in {paths['canaries']!r}:
    for attack in (os.remove, lambda p: open(p, 'w').write('pwned')):
        try:
            attack(canary); hits += 1
        except OSError:
            pass
    try:
        open(os.path.join(os.path.dirname(canary), 'new_file'), 'w').write('x'); hits += 1
    except OSError:
        pass
for target in {paths['escapes']!r}:  # /tmp and /dev/shm are writable inside: judged from outside
    try:
        open(target, 'w').write('x')
    except OSError:
        pass
print({TOKEN!r} if hits else 'blocked')
""", expect),
        "environment": (f"""import os, glob
found = any({TOKEN!r} in v for v in os.environ.values())
for path in glob.glob('/proc/*/environ') + ['/proc/{parent}/environ']:
    try:
        found |= {TOKEN!r}.encode() in open(path, 'rb').read()
    except OSError:
        pass
print({TOKEN!r} if found else 'nothing')
""", expect),
        "network": (f"""import socket
try:
    socket.create_connection(('127.0.0.1', {paths['port']}), timeout=1).sendall(b'hi')
    print({TOKEN!r})
except OSError:
    print('offline')
""", expect),
        "kill_parent": (f"""import os, signal
hits = 0
for pid in (os.getppid(), 1, {victim}, {parent}, -1):
    try:
        os.kill(pid, signal.SIGKILL); hits += 1
    except OSError:
        pass
print({TOKEN!r} if hits else 'denied')
""", expect),
        "exit_before_tests_stdin": ("import sys\nsys.exit(0)\n", expect),
        "exit_before_tests_call": ("import sys\nsys.exit(0)\ndef f(x):\n    return x\n",
                                   {"fn_name": "f", "inputs": [[TOKEN]], "outputs": [[TOKEN]]}),
        "os_exit_in_call": ("import os\ndef f(x):\n    os._exit(0)\n",
                            {"fn_name": "f", "inputs": [[TOKEN]], "outputs": [[TOKEN]]}),
    }


def _sandbox_processes() -> list[int]:
    """Pids of live processes owned by a sandbox uid."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid >= _UID_BASE:
                    pids.append(int(entry))
            except FileNotFoundError:
                pass
    return pids


@pytest.fixture(scope="module")
def attack_results(tmp_path_factory):
    os.environ["PRIME_SANDBOX_SECRET"] = TOKEN  # the "environment" attack looks for it
    outside = tmp_path_factory.mktemp("outside")
    home = os.path.join(os.path.expanduser("~"), ".cache", f"prime_sandbox_test_{os.getpid()}")
    os.makedirs(home, exist_ok=True)
    canaries = []
    for folder in (str(outside), home):
        os.chmod(folder, 0o777)  # world-writable: only the sandbox's own confinement protects them
        canaries.append(os.path.join(folder, "canary.txt"))
        with open(canaries[-1], "w") as f:
            f.write("intact")
        os.chmod(canaries[-1], 0o666)
    escapes = [f"/tmp/{TOKEN}", f"/dev/shm/{TOKEN}", os.path.join(home, "escape")]
    victim = subprocess.Popen(["sleep", "120"])
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    paths = {"canaries": canaries, "escapes": escapes, "victim_pid": victim.pid, "port": server.getsockname()[1]}
    programs = _adversaries(paths)

    def attack(item):
        start = time.monotonic()
        result = run_code_tests(item[1][0], item[1][1], timeout_s=TIMEOUT_S)
        return item[0], (result, time.monotonic() - start)

    with ThreadPoolExecutor(4) as pool:
        results = dict(pool.map(attack, programs.items()))
    state = {"canaries": {c: open(c).read() if os.path.exists(c) else None for c in canaries},
             "listing": {f: sorted(os.listdir(f)) for f in (str(outside), home)},
             "escapes": [e for e in escapes if os.path.exists(e)], "victim_alive": victim.poll() is None,
             "leftovers": _sandbox_processes()}
    try:
        server.accept()
        state["connected"] = True
    except BlockingIOError:
        state["connected"] = False
    server.close()
    victim.kill()
    victim.wait()
    del os.environ["PRIME_SANDBOX_SECRET"]
    for path in canaries:
        os.remove(path)
    os.rmdir(home)
    return results, state


ATTACKS = ["infinite_loop", "fork_bomb", "memory", "huge_print", "files", "environment", "network",
           "kill_parent", "exit_before_tests_stdin", "exit_before_tests_call", "os_exit_in_call"]


@needs_root
@pytest.mark.parametrize("name", ATTACKS)
def test_adversarial_program_scores_zero_within_limits(attack_results, name):
    results, _ = attack_results
    result, seconds = results[name]
    assert result.score == 0.0, result.statuses
    # One case: wall limit 2 s, plus interpreter start-up and kill on a loaded 2-core machine.
    assert seconds < TIMEOUT_S + 5.0


@needs_root
def test_adversaries_failed_for_the_expected_reason(attack_results):
    results, _ = attack_results
    statuses = {name: results[name][0].statuses[0] for name in ATTACKS}
    assert statuses["infinite_loop"] == "timeout"
    assert statuses["fork_bomb"] == "timeout"
    assert statuses["huge_print"] == "output_limit"
    # MemoryError at the 1 GiB address-space limit, or the wall limit first: touching pages runs at
    # ~100 MB/s on this loaded VM. test_limits_on_benign_programs shows where the limit bites.
    assert statuses["memory"] in ("error", "timeout")
    for name in ("files", "environment", "network", "kill_parent", "exit_before_tests_stdin"):
        assert statuses[name] == "wrong", name  # ran to the end and printed that the attack failed


@needs_root
def test_machine_left_as_it_was(attack_results):
    _, state = attack_results
    assert set(state["canaries"].values()) == {"intact"}
    assert all(listing == ["canary.txt"] for listing in state["listing"].values())
    assert state["escapes"] == []
    assert state["victim_alive"]
    assert not state["connected"]
    assert state["leftovers"] == []  # the fork bomb's processes died with its namespace
