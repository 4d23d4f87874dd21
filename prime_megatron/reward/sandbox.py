"""Run one untrusted Python program once, under OS-level limits.

`run_sandboxed(source, ...)` starts this very file as a fresh interpreter (the
"harness", trusted), which confines itself and then runs the program. The
program either reads stdin and writes stdout ("stdin" mode), or is imported and
one function is called with JSON arguments ("call" mode; the JSON return value
is written to the harness's stdout). Expected outputs never enter the sandbox:
comparison happens in the caller (`code.py`).

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
  size-capped tmpfs instances cover /tmp, /var/tmp, /dev/shm and /run/lock.
  The program's working directory is a fresh directory in that tmpfs.
- a fresh unprivileged uid/gid per run (root only: 100000 + harness pid), no
  supplementary groups, `no_new_privs`: it cannot write root-owned files,
  read other processes' `/proc/<pid>/environ`, or signal its parent.
- rlimits: CPU seconds, address space, file size, open files, core dumps
  off, and RLIMIT_NPROC (effective because the uid is fresh and unshared).
- the caller's side: scrubbed environment (PATH, LANG, HOME only), a new
  session so the whole process group is SIGKILLed on wall-clock timeout, and
  an output cap enforced while reading.

Fallbacks: a non-root caller gets a user namespace (same namespaces, but the
program keeps the caller's uid, so it can write where the caller can outside
the covered tmp dirs, and RLIMIT_NPROC counts the caller's processes); if no
namespace can be created only rlimits, the session kill and the scrubbed
environment remain, and a program that calls `setsid()` can outlive a
timeout. Deliberately left out: seccomp syscall filtering (no maintained
pure-Python package here) and cgroup memory/pids accounting (rlimits bound
each process; RLIMIT_NPROC bounds their number).

This module uses only the standard library because it runs as a script.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_UID_BASE = 100000
_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_WORKDIR = "/tmp/sandbox"
# Imports LeetCode-style solutions assume without writing them (`List[int]`, `deque`, ...).
_CALL_PRELUDE = (
    "from typing import *\nimport collections, math, heapq, bisect, itertools, functools, string, re\n"
    "from collections import deque, defaultdict, Counter, OrderedDict\n"
)


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. `wall_s` is enforced by the caller, the others by rlimits."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_bytes: int = 1 << 30
    output_bytes: int = 1 << 20
    max_processes: int = 8  # threads count too; competitive code may start one big-stack thread
    file_bytes: int = 16 << 20
    tmpfs_bytes: int = 64 << 20


@dataclass
class RunResult:
    """What happened: status is ok | error | timeout | output_limit | signal."""

    status: str
    stdout: bytes
    stderr_tail: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    protections: list[str] = field(default_factory=list)


def run_sandboxed(
    source: str,
    *,
    stdin: str = "",
    fn_name: str | None = None,
    args: list | None = None,
    limits: SandboxLimits = SandboxLimits(),
) -> RunResult:
    """Run `source` once: stdin mode when `fn_name` is None, else call `fn_name(*args)`."""
    if fn_name is not None and not isinstance(args, list):
        raise TypeError(f"args must be a list of call arguments when fn_name is set, got {type(args).__name__}")
    private = tempfile.mkdtemp(prefix="prime_sandbox_")  # 0700: only the caller's uid reads the spec
    try:
        spec = {"source": source, "fn_name": fn_name, "args": args, "limits": limits.__dict__}
        spec_path = os.path.join(private, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        stdin_path = os.path.join(private, "stdin")
        with open(stdin_path, "w") as f:
            f.write(stdin)
        with open(stdin_path, "rb") as stdin_file:
            return _supervise(spec_path, stdin_file, private, limits)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _supervise(spec_path: str, stdin_file, private: str, limits: SandboxLimits) -> RunResult:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": _WORKDIR, "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-B", os.path.abspath(__file__), spec_path],
        stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, cwd=private, start_new_session=True, close_fds=True,
    )
    status, out, err = _collect(proc, start + limits.wall_s, limits.output_bytes)
    if status != "ok":
        _kill_group(proc.pid)
    proc.wait()
    seconds = time.monotonic() - start
    err_text = err.decode("utf-8", "replace")
    protections, _, err_text = err_text.partition("\n") if err_text.startswith("#protections ") else ("", "", err_text)
    rc = proc.returncode
    if status == "ok":
        status = "ok" if rc == 0 else ("signal" if rc < 0 else "error")
    return RunResult(status, out, err_text[-2000:], rc, seconds, protections.split()[1:])


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


def _set_up_mounts(libc, limits: dict, protections: list[str]) -> None:
    """Inside the new mount namespace: private, read-only host, fresh tmpfs scratch, new /proc."""
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
            st = os.statvfs(target)
            readonly &= bool(st.f_flag & os.ST_RDONLY)
    if readonly:
        protections.append("readonly-host")
    opts = f"size={limits['tmpfs_bytes']},mode=1777".encode()
    for target in _SCRATCH_DIRS:
        if os.path.isdir(target):
            _check(libc.mount(b"tmpfs", target.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts), f"tmpfs {target}")
    protections.append("tmpfs-scratch")
    _expose_interpreter(libc)


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
        os.makedirs(prefix, mode=0o755, exist_ok=True)
        source, target = f"/proc/self/fd/{fd}".encode(), prefix.encode()
        _check(libc.mount(source, target, None, _MS_BIND | _MS_REC, None), f"bind {prefix}")
        libc.mount(target, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None)
        os.close(fd)


def _drop_privileges(libc, uid: int | None, limits: dict, protections: list[str]) -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        protections.append("fresh-uid")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    cpu = int(limits["cpu_s"])
    rlimits = [(resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, limits["memory_bytes"]),
               (resource.RLIMIT_FSIZE, limits["file_bytes"]), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)]
    if uid is not None:  # RLIMIT_NPROC counts every process of the uid: only meaningful for a fresh one
        rlimits.append((resource.RLIMIT_NPROC, limits["max_processes"]))
    for which, value in rlimits:
        resource.setrlimit(which, value if isinstance(value, tuple) else (value, value))
    protections.append("rlimits")


def _prepare_workdir(source: str, workdir: str, uid: int | None) -> None:
    os.makedirs(workdir, mode=0o700)
    path = os.path.join(workdir, "solution.py")
    with open(path, "w") as f:
        f.write(source)
    if uid is not None:
        if workdir != _WORKDIR:  # no mount namespace: let the fresh uid traverse the caller's private dir
            os.chmod(os.path.dirname(workdir), 0o711)
        os.chown(workdir, uid, uid)
        os.chown(path, uid, uid)
    os.chdir(workdir)


def _run_program(spec: dict) -> None:
    """Runs as the confined process. Never returns."""
    if spec["fn_name"] is None:
        import runpy
        sys.argv = ["solution.py"]
        code = 0
        try:
            runpy.run_path("solution.py", run_name="__main__")
        except SystemExit as stop:  # sys.exit() after printing is normal in contest code
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        sys.stdout.flush()
        os._exit(code)
    result_fd = os.dup(1)  # program prints go to stderr; only the harness writes the result
    os.dup2(2, 1)
    module = {"__name__": "solution", "__file__": "solution.py"}
    exec(_CALL_PRELUDE, module)
    exec(compile(spec["source"], "solution.py", "exec"), module)
    holder = module.get("Solution")
    fn = getattr(holder(), spec["fn_name"], None) if isinstance(holder, type) else None
    fn = fn if fn is not None else module.get(spec["fn_name"])
    if not callable(fn):
        sys.stderr.write(f"no function named {spec['fn_name']!r} in the program\n")
        os._exit(3)
    value = fn(*spec["args"])
    payload = json.dumps(value, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else list(o))
    os.write(result_fd, payload.encode())
    os._exit(0)


def _exit_code(status: int) -> int:
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _harness_main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    limits, libc, protections = spec["limits"], _libc(), []
    # A uid no other process uses while this harness lives (its pid is unique until it exits).
    uid = _UID_BASE + os.getpid() if os.getuid() == 0 else None
    workdir = os.path.join(os.getcwd(), "work")
    if _enter_namespaces(libc, protections):
        if "userns" in protections:
            uid = None
        init = os.fork()
        if init:  # outside the namespace: relay the exit status
            return _exit_code(os.waitpid(init, 0)[1])
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # harness gone -> namespace torn down
        _set_up_mounts(libc, limits, protections)
        workdir = _WORKDIR
    _prepare_workdir(spec["source"], workdir, uid)
    child = os.fork()
    if child == 0:
        try:
            _drop_privileges(libc, uid, limits, protections)
            os.environ["HOME"] = workdir
            sys.stderr.write("#protections " + " ".join(protections) + "\n")
            sys.stderr.flush()
            _run_program(spec)
        except BaseException:  # the program's own failure (or SystemExit): report it, exit non-zero
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    return _exit_code(os.waitpid(child, 0)[1])


if __name__ == "__main__":
    sys.exit(_harness_main(sys.argv[1]))
