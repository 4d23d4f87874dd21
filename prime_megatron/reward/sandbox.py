"""Run an untrusted Python program on a list of test cases, under OS-level limits.

`run_sandboxed(source, cases, ...)` starts this very file as a fresh interpreter
(the "harness", trusted), which confines itself once and then forks one confined
process per case, in a fresh working directory, and supervises it (wall time,
output cap, killing everything the case started). The program either reads
stdin and writes stdout ("stdin" mode), or is imported and one function is
called with JSON arguments ("call" mode; the JSON return value is reported).
Expected outputs never enter the sandbox: comparison happens in `code.py`.

Protections, strongest first. Each is probed at run time and the ones that
took effect are reported in `RunResult.protections`. On the development
machine (root in a container, Linux 6.18, user/pid/net namespaces permitted)
all of them are active:

- pid namespace: the program cannot see or signal any process outside it
  (`/proc` is remounted); the namespace's init is the trusted harness, so
  killing it (on timeout) kills every process the program forked, even ones
  that called `setsid()`.
- network namespace: only a down loopback device, so no socket can connect.
- mount namespace (private propagation, nothing leaks to the host): every
  host mount except /proc, /sys, /dev is re-mounted read-only, and fresh
  size-capped tmpfs instances cover /tmp, /var/tmp, /dev/shm and /run/lock (an interpreter
  installed under one of them, e.g. a venv in a checkout under /tmp, is bound back in read-only).
  The tmpfs instances are replaced before every case, and the program's
  working directory is a fresh directory in them.
- a fresh unprivileged uid/gid per program (root only: 2e9 + harness pid), no
  supplementary groups, `no_new_privs`: it cannot write root-owned files,
  read other processes' `/proc/<pid>/environ`, or signal its parent.
- rlimits: CPU seconds, address space, file size, open files, core dumps
  off, and RLIMIT_NPROC (effective because the uid is fresh and unshared).
- supervision: scrubbed environment (PATH, LANG, HOME only); per case a
  wall-clock limit and an output cap enforced by the harness, after which
  every process of the case is SIGKILLed (`kill(-1)` from the namespace
  init); the caller starts the harness in a new session and kills that
  process group if the harness itself overruns.

Fallbacks (written, but not exercised here: this machine's tests run as root):
a non-root caller gets a user namespace (same namespaces, but the program keeps
the caller's uid, so it can write where the caller can outside the covered
scratch dirs, and RLIMIT_NPROC is not set); if no namespace can be created
(e.g. a container whose seccomp profile forbids unshare) only the fresh uid
(as root), rlimits, the scrubbed environment and a per-case session kill
remain, and a program that calls `setsid()` can outlive its case. The
interpreter itself must be readable by the fresh uid in that case.
Deliberately left out: seccomp syscall filtering (no maintained pure-Python
package here) and cgroup memory/pids accounting (rlimits bound each process;
RLIMIT_NPROC bounds their number). Needs Linux >= 5.3 (pidfd_open).

This module uses only the standard library because it runs as a script.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import sys
import time

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_MNT_DETACH = 2
_UID_BASE = 2_000_000_000  # far above login, LDAP and subuid ranges; + pid stays < 2**31
_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_WORKDIR = "/tmp/sandbox"
# Imports LeetCode-style solutions assume without writing them (`List[int]`, `deque`, ...).
_CALL_PRELUDE = (
    "from typing import *\nimport collections, math, heapq, bisect, itertools, functools, string, re\n"
    "from collections import deque, defaultdict, Counter, OrderedDict\n"
)


# ---------------------------------------------------------------- harness side (runs in the child)


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enter_namespaces(libc, protections: list[str]) -> bool:
    """unshare pid/net/mount/ipc/uts (plus user when not root). True if a pid namespace was made."""
    flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    if uid != 0:
        flags |= _CLONE_NEWUSER
    if libc.unshare(flags) != 0:
        return False
    if uid != 0:  # become root of the new user namespace so we may mount
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                           ("/proc/self/gid_map", f"0 {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
        protections.append("userns")
    protections += ["pidns", "netns", "mountns"]
    return True


def _set_up_mounts(libc, protections: list[str]) -> None:
    """Inside the new mount namespace: private propagation, new /proc, read-only host."""
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make mounts private")
    _check(libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV, None), "mount /proc")
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    readonly = True
    for target in targets:
        if target.split("/")[1] in ("proc", "sys", "dev"):
            continue
        path = target.encode()
        if libc.mount(path, path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None) != 0:
            readonly &= bool(os.statvfs(target).f_flag & os.ST_RDONLY)
    if readonly:
        protections.append("readonly-host")
    _expose_interpreter(libc)


def _fresh_scratch(libc, limits: dict, first: bool) -> None:
    """New empty size-capped tmpfs on every world-writable scratch dir (per test case).

    An interpreter installed under one of them (a venv in a checkout under /tmp) is bound
    back in, read-only, at its own path, so the program keeps its stdlib and site-packages.
    """
    opts = f"size={limits['tmpfs_bytes']},mode=1777".encode()
    prefixes = sorted({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)})
    for target in _SCRATCH_DIRS:
        if not os.path.isdir(target):
            continue
        if not first:
            _check(libc.umount2(target.encode(), _MNT_DETACH), f"unmount {target}")
        inside = [p for p in prefixes if p.startswith(target + "/")]
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in inside]  # before the tmpfs hides them
        _check(libc.mount(b"tmpfs", target.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts), f"tmpfs {target}")
        for prefix, fd in zip(inside, fds):
            _bind_readonly(libc, fd, prefix)


def _bind_readonly(libc, fd: int, path: str) -> None:
    """Bind the directory open as O_PATH `fd` at `path` (created if needed), read-only; close fd."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    source, target = f"/proc/self/fd/{fd}".encode(), path.encode()
    _check(libc.mount(source, target, None, _MS_BIND | _MS_REC, None), f"bind {path}")
    libc.mount(target, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None)
    os.close(fd)


def _blocked_ancestor(path: str) -> str | None:
    """The first ancestor of `path` that other users may not traverse (e.g. /root of a pyenv)."""
    parts = os.path.realpath(path).split("/")[1:]
    for i in range(1, len(parts) + 1):
        ancestor = "/" + "/".join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _expose_interpreter(libc) -> None:
    """The fresh uid must read the stdlib even when Python lives under a private home.

    Cover the private ancestor with an empty tmpfs (hiding the rest of it) and bind
    only the interpreter's prefix back in, read-only.
    """
    for prefix in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}):
        blocked = _blocked_ancestor(prefix)
        if blocked is None:
            continue
        fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
        if not os.path.ismount(blocked):
            _check(libc.mount(b"tmpfs", blocked.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=1m,mode=755"),
                   f"tmpfs over {blocked}")
        _bind_readonly(libc, fd, prefix)


def _drop_privileges(libc, uid: int | None, limits: dict) -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    cpu = int(limits["cpu_s"])
    rlimits = [(resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, limits["memory_bytes"]),
               (resource.RLIMIT_FSIZE, limits["file_bytes"]), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)]
    if uid is not None:  # RLIMIT_NPROC counts every process of the uid: only meaningful for a fresh one
        rlimits.append((resource.RLIMIT_NPROC, limits["max_processes"]))
    for which, value in rlimits:
        resource.setrlimit(which, value if isinstance(value, tuple) else (value, value))


def _prepare_workdir(source: str, workdir: str, uid: int | None) -> None:
    os.makedirs(workdir, mode=0o700)
    path = os.path.join(workdir, "solution.py")
    with open(path, "w") as f:
        f.write(source)
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.chown(path, uid, uid)


def _hidden_file(folder: str, content: str) -> int:
    """A root-only file, unlinked at once: the program gets the fd, never the path."""
    path = os.path.join(folder, f".io{os.getpid()}_{time.monotonic_ns()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    os.write(fd, content.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _run_program(spec: dict, case) -> None:
    """Runs as the confined process. Never returns."""
    program = compile(spec["source"], "solution.py", "exec")
    if spec["fn_name"] is None:
        sys.argv = ["solution.py"]
        code = 0
        try:
            exec(program, {"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__})
        except SystemExit as stop:  # sys.exit() after printing is normal in contest code
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        sys.stdout.flush()
        os._exit(code)
    result_fd = os.dup(1)  # program prints go to stderr; only the harness writes the result
    os.dup2(2, 1)
    module = {"__name__": "solution", "__file__": "solution.py"}
    exec(_CALL_PRELUDE, module)
    exec(program, module)
    holder = module.get("Solution")
    fn = getattr(holder(), spec["fn_name"], None) if isinstance(holder, type) else None
    fn = fn if fn is not None else module.get(spec["fn_name"])
    if not callable(fn):
        sys.stderr.write(f"no function named {spec['fn_name']!r} in the program\n")
        os._exit(3)
    value = fn(*case)
    payload = json.dumps(value, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else list(o))
    os.write(result_fd, payload.encode())
    os._exit(0)


def _exit_code(status: int) -> int:
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _start_case(libc, spec: dict, case, workdir: str, uid: int | None, io_fds: tuple, own_session: bool) -> int:
    """Fork the confined process for one case; returns its pid."""
    child = os.fork()
    if child:
        return child
    try:
        for target, fd in enumerate(io_fds):
            os.dup2(fd, target)
        if own_session:  # no pid namespace: the process group is what gets killed
            os.setsid()
        os.chdir(workdir)
        _drop_privileges(libc, uid, spec["limits"])
        os.environ["HOME"] = workdir
        _run_program(spec, case)
    except BaseException:  # the program's own failure (or SystemExit in call mode): report, exit non-zero
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def _watch(child: int, out_fd: int, deadline: float, cap: int) -> tuple[str, bytes, int | None]:
    """Collect stdout until the process exits, the wall deadline, or more than `cap` bytes.

    Once the process has exited, only what is already in the pipe is read: background
    children still holding stdout do not extend the case (they are killed next).
    """
    pidfd = os.pidfd_open(child)
    chunks, size, status, exited = [], 0, None, False
    while status is None and not exited:
        left = deadline - time.monotonic()
        ready = select.select([out_fd, pidfd], [], [], max(left, 0))[0]
        if not ready and left <= 0:
            status = "timeout"
        exited = pidfd in ready
        while out_fd in ready and status is None:
            data = os.read(out_fd, 65536)
            chunks.append(data)
            size += len(data)
            status = "output_limit" if size > cap else None
            # Keep draining after exit; before it, one read per wake-up.
            ready = select.select([out_fd], [], [], 0)[0] if exited and data else []
    os.close(pidfd)
    if status is not None:
        return status, b"".join(chunks)[:cap], None
    rc = _exit_code(os.waitpid(child, 0)[1])
    return ("ok" if rc == 0 else "error"), b"".join(chunks), rc


def _kill_case(child: int, in_pidns: bool) -> None:
    """Kill everything the case started and reap it."""
    if in_pidns and os.getpid() == 1:  # kill(-1) from a namespace init reaches only that namespace
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:  # nothing left running
            pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    try:
        os.killpg(child, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(child, 0)
    except ChildProcessError:
        pass


def _run_case(libc, spec: dict, index: int, base: str, uid: int | None, in_pidns: bool) -> tuple[dict, bytes]:
    limits, case = spec["limits"], spec["cases"][index]
    if in_pidns:
        _fresh_scratch(libc, limits, first=index == 0)
        workdir = _WORKDIR
    else:
        workdir = os.path.join(base, str(index))
    _prepare_workdir(spec["source"], workdir, uid)
    stdin_text = case if spec["fn_name"] is None else ""
    stdin_fd, err_fd = _hidden_file(os.path.dirname(workdir), stdin_text), _hidden_file(os.path.dirname(workdir), "")
    out_read, out_write = os.pipe()
    start = time.monotonic()
    child = _start_case(libc, spec, case, workdir, uid, (stdin_fd, out_write, err_fd), not in_pidns)
    os.close(out_write)
    status, stdout, rc = _watch(child, out_read, start + limits["wall_s"], limits["output_bytes"])
    _kill_case(child, in_pidns)
    seconds = time.monotonic() - start
    size = os.fstat(err_fd).st_size
    os.lseek(err_fd, max(0, size - 2000), os.SEEK_SET)
    stderr_tail = os.read(err_fd, 2000).decode("utf-8", "replace")
    for fd in (stdin_fd, err_fd, out_read):
        os.close(fd)
    header = {"status": status, "rc": rc, "seconds": seconds, "stderr": stderr_tail, "length": len(stdout)}
    return header, stdout


def _harness_main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    libc, protections = _libc(), []
    # A uid no other process uses while this harness lives (its pid is unique until it exits).
    uid = _UID_BASE + os.getpid() if os.getuid() == 0 else None
    base = os.path.join(os.getcwd(), "work")
    in_pidns = _enter_namespaces(libc, protections)
    if in_pidns:
        if "userns" in protections:
            uid = None
        init = os.fork()
        if init:  # outside the namespace: relay the exit status
            return _exit_code(os.waitpid(init, 0)[1])
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # harness gone -> namespace torn down
        _set_up_mounts(libc, protections)
        protections.append("tmpfs-scratch")
    else:
        os.makedirs(base)
        os.chmod(os.getcwd(), 0o711)  # let a fresh uid reach its work dir inside the private dir
    protections += (["fresh-uid"] if uid is not None else []) + ["rlimits"]
    out = sys.stdout.buffer
    out.write(json.dumps({"protections": protections}).encode() + b"\n")
    out.flush()  # before any fork: a buffered byte would be written twice
    for index in range(len(spec["cases"])):
        header, stdout = _run_case(libc, spec, index, base, uid, in_pidns)
        out.write(json.dumps(header).encode() + b"\n" + stdout)
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_harness_main(sys.argv[1]))

# ---------------------------------------------------------------- caller side
# Imported only here: the harness has exited above, and interpreter start-up (imports
# included) is most of what one test case costs.
import selectors  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402


@dataclass(frozen=True)
class SandboxLimits:
    """Per-case limits: wall time and output by the harness, the others by rlimits."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_bytes: int = 1 << 30
    output_bytes: int = 1 << 20
    max_processes: int = 8  # threads count too; competitive code may start one big-stack thread
    file_bytes: int = 16 << 20
    tmpfs_bytes: int = 64 << 20


@dataclass
class RunResult:
    """One case: status is ok | error (non-zero exit) | timeout | output_limit."""

    status: str
    stdout: bytes
    stderr_tail: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    protections: list[str] = field(default_factory=list)


def run_sandboxed(source: str, cases: list, *, fn_name: str | None = None,
                  limits: SandboxLimits = SandboxLimits()) -> list[RunResult]:
    """Run `source` once per case, each in a fresh confined process; one result per case.

    Without `fn_name` a case is the program's stdin text; with it, a case is the list of
    arguments for `fn_name` and `stdout` holds the JSON of the return value.
    """
    if not isinstance(cases, list):
        raise TypeError(f"cases must be a list, got {type(cases).__name__}")
    for i, case in enumerate(cases):
        if not isinstance(case, list if fn_name is not None else str):
            want = "a list of call arguments" if fn_name is not None else "stdin text (str)"
            raise TypeError(f"cases[{i}] must be {want}, got {type(case).__name__}")
    private = tempfile.mkdtemp(prefix="prime_sandbox_")  # 0700: only the caller's uid reads the spec
    try:
        spec = {"source": source, "fn_name": fn_name, "cases": cases, "limits": limits.__dict__}
        spec_path = os.path.join(private, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        return _supervise(spec_path, private, len(cases), limits)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _supervise(spec_path: str, private: str, num_cases: int, limits: SandboxLimits) -> list[RunResult]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": _WORKDIR, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-I", "-B", os.path.abspath(__file__), spec_path],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, cwd=private, start_new_session=True, close_fds=True,
    )
    # The harness enforces each case's limits; this outer bound only catches a stuck harness.
    deadline = time.monotonic() + num_cases * (limits.wall_s + 2.0) + 10.0
    cap = num_cases * (limits.output_bytes + 4096) + 4096
    status, out, err = _collect(proc, deadline, cap)
    if status != "ok":
        _kill_group(proc.pid)
    proc.wait()
    return _parse_frames(out, num_cases, err.decode("utf-8", "replace")[-2000:])


def _parse_frames(out: bytes, num_cases: int, harness_err: str) -> list[RunResult]:
    """Harness output: a protections line, then per case a JSON header line and the raw stdout."""
    results, protections, pos = [], [], 0
    line_end = out.find(b"\n")
    if line_end >= 0:
        protections = json.loads(out[:line_end])["protections"]
        pos = line_end + 1
    while len(results) < num_cases:
        line_end = out.find(b"\n", pos)
        if line_end < 0:  # the harness died or was killed: the remaining cases failed
            results.append(RunResult("error", b"", harness_err, None, 0.0, protections))
            continue
        header = json.loads(out[pos:line_end])
        pos = line_end + 1 + header["length"]
        results.append(RunResult(header["status"], out[line_end + 1:pos], header["stderr"], header["rc"],
                                 header["seconds"], protections))
    return results


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[str, bytes, bytes]:
    """Read stdout/stderr until EOF, the deadline, or more than `cap` stdout bytes."""
    chunks = {proc.stdout: [], proc.stderr: []}
    sizes = {proc.stdout: 0, proc.stderr: 0}
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        status = "ok"
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            for key, _ in sel.select(timeout=left):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                if sizes[key.fileobj] <= cap:  # stderr shares the cap; beyond it we only drain
                    chunks[key.fileobj].append(data)
                sizes[key.fileobj] += len(data)
            if sizes[proc.stdout] > cap:
                status = "output_limit"
                break
    return status, b"".join(chunks[proc.stdout])[:cap], b"".join(chunks[proc.stderr])


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
