"""A real single-node Slurm (with accounting) for the launch tests, started once per session.

`tools/local_slurm.sh` installs the Debian packages when they are missing (root only) and
starts munged, MariaDB, slurmdbd, slurmctld and slurmd under a private directory on free
ports, so it never touches a Slurm the machine may already run. The daemons are stopped by
their recorded PIDs at the end. Without Slurm and without a way to install it, the tests
that use the fixture skip and say why; a Slurm that is installed but fails to start is a
test error, with its logs.
"""
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SLURM = ROOT / "tools" / "local_slurm.sh"
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/slurmdbd", "/usr/sbin/munged",
           "/usr/sbin/mariadbd")


def _install_if_missing() -> None:
    if all(os.path.exists(path) for path in DAEMONS) and shutil.which("sbatch"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no Slurm: slurmctld/slurmd/slurmdbd/munge/mariadb are not installed and "
                    "installing them needs root and apt-get (see tools/local_slurm.sh install)")
    proc = subprocess.run(["bash", str(LOCAL_SLURM), "install", "--accounting"], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"no Slurm: apt-get install failed: {proc.stderr[-500:]}")


def _logs(slurm_dir: Path) -> str:
    parts = []
    for log in sorted(slurm_dir.glob("log/*.log")):
        parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(parts)


@pytest.fixture(scope="session")
def local_slurm():
    """Environment (a copy of os.environ plus SLURM_CONF) for talking to the local Slurm."""
    _install_if_missing()
    # Not under pytest's 0700 tmp dir: munged runs as user munge and must reach its files.
    slurm_dir = Path(tempfile.mkdtemp(prefix="prime-slurm-"))
    slurm_dir.chmod(0o755)
    env = dict(os.environ, PRIME_SLURM_DIR=str(slurm_dir))
    for name in ("CTLD", "SLURMD", "DBD", "DB"):
        env[f"PRIME_SLURM_{name}_PORT"] = str(free_port())
    try:
        proc = subprocess.run(["bash", str(LOCAL_SLURM), "start", "--accounting"], env=env,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"local Slurm did not start:\n{proc.stderr}\n{_logs(slurm_dir)}")
        env["SLURM_CONF"] = str(slurm_dir / "etc" / "slurm.conf")
        # Jobs inherit this environment (sbatch --export=ALL): the venv's python and torchrun.
        env["PATH"] = os.pathsep.join([str(Path(os.sys.executable).parent), env["PATH"]])
        yield env
    finally:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(slurm_dir, ignore_errors=True)


def job_info(env: dict, job_id: str) -> dict:
    """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_for_job(env: dict, job_id: str, *, timeout_s: float, until=None) -> dict:
    """Poll until the job has left PENDING/RUNNING (or `until(info)` holds); fail on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = job_info(env, job_id)
        if until(info) if until else info["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return info
        time.sleep(0.5)
    info = job_info(env, job_id)
    nodes = subprocess.run(["sinfo", "-N", "-l"], env=env, capture_output=True, text=True, timeout=30).stdout
    subprocess.run(["scancel", job_id], env=env, timeout=30)
    pytest.fail(f"job {job_id} still {info['JobState']} (reason {info.get('Reason')}) after {timeout_s} s\n"
                f"{info}\n{nodes}\n{_logs(Path(env['PRIME_SLURM_DIR']))}")


def sbatch(env: dict, *args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"sbatch {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip().split(";")[0]
