"""The sbatch launcher (slurm/prime_tiny.sh) on a real local Slurm.

The job body here is tests/launch/probe.py (a gloo all-reduce that reports its world size,
working directory and arguments, and optionally waits for the checkpoint signal), so these
tests check the launch path itself: srun + torchrun c10d rendezvous, argument passing,
USR1 forwarding to every rank and requeue. The trainer run through the same launcher and
through nemo-run's Slurm executor is tested in test_tiny_train.py.
"""
import subprocess
import time

import pytest

from tests.launch.conftest import ROOT, job_info, sbatch, wait_for_job

pytestmark = pytest.mark.slurm


def _probe_env(local_slurm, tmp_path, **extra):
    out = tmp_path / "probe.txt"
    env = dict(local_slurm, MODULE="tests.launch.probe", PROBE_OUT=str(out), LOG_DIR=str(tmp_path / "logs"),
               **extra)
    return env, out


def _wait_for_file(path, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert path.exists(), f"{path} was not written within {timeout_s} s"


def test_tiny_script_runs_two_ranks_with_config_and_overrides(local_slurm, tmp_path):
    env, out = _probe_env(local_slurm, tmp_path, OVERRIDES="rollout.n=2")
    job = sbatch(env, f"--output={tmp_path}/%x-%j.out", "slurm/prime_tiny.sh", "trainer.total_steps=2")
    info = wait_for_job(env, job, timeout_s=90)
    log = next(tmp_path.glob("*.out")).read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    # Both ranks joined one c10d rendezvous (0 + 1 = 1), in the repository root, with the
    # script's config, --resume, the OVERRIDES variable and the command-line override.
    assert out.read_text() == (f"world=2 sum=1 cwd={ROOT} args=--config examples/tiny_cpu.yaml "
                               "--resume rollout.n=2 trainer.total_steps=2\n")
    assert (tmp_path / "logs" / job).is_dir(), "per-job torchrun log dir missing"


def test_batch_signal_reaches_ranks_and_requeues(local_slurm, tmp_path):
    # The header's `--signal=B:USR1@60` lands on the batch shell; scancel --batch sends the same.
    env, out = _probe_env(local_slurm, tmp_path, PROBE_WAIT_SIGNAL="1")
    job = sbatch(env, f"--output={tmp_path}/%x-%j.out", "slurm/prime_tiny.sh")
    try:
        _wait_for_file(out, 90)  # the ranks are up and waiting
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True, timeout=30)
        # Requeued: the restart count goes up and the job waits in the queue for its next run.
        wait_for_job(env, job, timeout_s=60,
                     until=lambda i: i.get("Restarts") == "1" and i["JobState"] in ("PENDING", "REQUEUED"))
        assert out.read_text().endswith("signal=USR1\n"), out.read_text()
    finally:
        subprocess.run(["scancel", job], env=env, timeout=30)
