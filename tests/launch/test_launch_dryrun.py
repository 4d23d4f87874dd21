"""tools/launch.py --dryrun: the sbatch script nemo-run would submit, without any cluster."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dryrun_prints_the_sbatch_script(tmp_path):
    pytest.importorskip("nemo_run", reason="nemo-run is not installed (the [launch] extra)")
    cmd = [sys.executable, "tools/launch.py", "--config", "examples/prime_70b.yaml", "--nodes", "16",
           "--account", "acc", "--partition", "gpu", "--time", "12:00:00", "--signal-s", "900",
           "--container-image", "nvcr.io/nvidia/pytorch:25.01-py3", "--workdir", "/scratch/me/prime-megatron",
           "--dryrun", "rollout.n=4"]
    proc = subprocess.run(cmd, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "NEMORUN_HOME": str(tmp_path / "home"),
                                              "COLUMNS": "400", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = " ".join(proc.stdout.split())  # rich wraps long lines
    for expected in ("#SBATCH --nodes=16", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                     "#SBATCH --signal=USR1@900", "#SBATCH --time=12:00:00", "#SBATCH --partition=gpu",
                     "export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                     "--container-image nvcr.io/nvidia/pytorch:25.01-py3", "--container-workdir /scratch/me/prime-megatron",
                     "--nnodes 16 --nproc-per-node 8",
                     "-m prime_megatron.train --config examples/prime_70b.yaml --resume rollout.n=4"):
        assert expected in text, f"{expected!r} missing from the dry run:\n{proc.stdout[-4000:]}"
    assert not list((tmp_path / "home").rglob("*.out")), "a dry run must not submit anything"


def test_bad_nemorun_home_is_refused():
    from prime_megatron.launch import _check_nemorun_home

    _check_nemorun_home("/home/me/.nemo_run")  # the default is fine
    with pytest.raises(ValueError, match="contains '/nemo_run'"):
        _check_nemorun_home("/tmp/x/nemo_run")
