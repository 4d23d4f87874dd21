"""The real trainer through the launchers on a local Slurm: run, preempt, resume.

Two jobs on the tiny example (2 ranks, tp=2 by override, gloo), checked by their Slurm
state, their logs and the checkpoints they leave:
  1. `sbatch slurm/prime_tiny.sh` trains; after step 2 the job's preemption signal
     (`scancel --signal=USR1`) makes it write a checkpoint at the end of its step k >= 2 and stop;
  2. a nemo-run submission (tools/launch.py, Slurm executor) resumes at k, runs one more
     step, writes the final checkpoint k+1 and SUCCEEDS.
The starting policy comes from a short SFT run, as in tests/test_train.py.
"""
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.distributed import run_distributed
from tests.launch.conftest import ROOT, job_info, sbatch, wait_for_job

TINY = ROOT / "examples" / "tiny"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(importlib.util.find_spec("prime_megatron.train") is None,
                       reason="prime_megatron.train (the trainer) is not in this checkout yet"),
]


def _sft(rank, world_size, config_path):
    from prime_megatron.config import load_config
    from prime_megatron.sft import sft

    return sft(load_config(config_path, []))


def _write_config(tmp: Path) -> Path:
    cfg = {
        "model": {"policy_path": str(tmp / "sft"), "tokenizer_path": str(TINY)},
        "rollout": {"n": 4, "max_prompt_len": 32, "max_response_len": 12},
        "reward": {"verifier": {"num_workers": 1}},
        "filter": {"enabled": False},  # train every step whatever the tiny model's accuracy
        "update": {"micro_batch_size": 4},
        "data": {"train_files": [str(TINY / "train.jsonl")], "batch_size": 2},
        "sft": {"train_files": [str(tmp / "sft.jsonl")], "init_path": str(TINY), "output_dir": str(tmp / "sft"),
                "epochs": 1, "batch_size": 16, "lr": 1.0e-3, "max_len": 80},
        "trainer": {"total_steps": 2, "eval_every": 0},
        "checkpoint": {"dir": str(tmp / "ckpt"), "save_every": 0},
        "logging": {"tensorboard_dir": str(tmp / "tb")},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_slurm")
    (tmp / "sft.jsonl").write_text("\n".join((TINY / "sft.jsonl").read_text().splitlines()[:32]) + "\n")
    config = _write_config(tmp)
    run_distributed(_sft, 1, (str(config),), timeout_s=300)
    return config


def _checkpoint_step(config: Path) -> int:
    ckpt = config.parent / "ckpt"
    latest = (ckpt / "latest").read_text().strip()
    return json.loads((ckpt / latest / "trainer_state.json").read_text())["step"]


def _wait_for_line(path: Path, pattern: str, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = path.exists() and re.search(pattern, path.read_text(errors="replace"))
        if match:
            return match
        time.sleep(0.5)
    pytest.fail(f"{pattern!r} not in {path} after {timeout_s} s:\n"
                f"{path.read_text(errors='replace')[-3000:] if path.exists() else '(no file)'}")


def test_run_preempt_resume_then_nemo_run(local_slurm, tiny_config, tmp_path):
    # The SFT start ran on one rank; the launched runs are tp=2 over the job's 2 ranks.
    env = dict(local_slurm, CONFIG=str(tiny_config), OVERRIDES="parallel.tp=2", LOG_DIR=str(tmp_path / "logs"))
    # 1. sbatch: 2 ranks train; the job's preemption signal (`scancel --signal=USR1`, what the
    # header's --signal delivers to the steps) after step 2 makes it checkpoint and stop.
    job = sbatch(env, f"--output={tmp_path}/first.out", "slurm/prime_tiny.sh", "trainer.total_steps=50")
    _wait_for_line(tmp_path / "first.out", r"tp=2 pp=1 dp=1, starting", 150)
    _wait_for_line(tmp_path / "first.out", r"step 2:", 120)
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True, timeout=30)
    wait_for_job(env, job, timeout_s=120)
    stopped = int(_wait_for_line(tmp_path / "first.out", r"stop requested; checkpoint saved at step (\d+)", 5)[1])
    assert 2 <= stopped < 50 and _checkpoint_step(tiny_config) == stopped

    # 2. nemo-run to the same Slurm through tools/launch.py: resumes at `stopped`, one more
    # step, SUCCEEDED (nemo-run reads that from sacct, i.e. slurmdbd accounting).
    nemo_env = dict(env, NEMORUN_HOME=str(tmp_path / "nemorun_home"))  # read once, at nemo-run import
    cmd = [sys.executable, "tools/launch.py", "--config", str(tiny_config), "--executor", "slurm",
           "--nproc-per-node", "2", "--gpus-per-node", "0", "--time", "00:10:00", "--signal-s", "60",
           "--name", "tiny", "parallel.tp=2", f"trainer.total_steps={stopped + 1}"]
    proc = subprocess.run(cmd, env=nemo_env, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "nemorun_home").rglob("log*.out"))
    assert proc.returncode == 0 and "tiny: SUCCEEDED" in proc.stdout, f"{proc.stdout[-2000:]}\n{logs[-3000:]}"
    job = re.search(r"\(job (\d+),", proc.stdout)[1]
    assert job_info(env, job)["JobState"] == "COMPLETED"
    assert f"resuming at step {stopped}" in logs
    assert _checkpoint_step(tiny_config) == stopped + 1
