"""nemo-run experiment definitions for the trainer: one task, a Slurm executor and a local one.

The task is `torchrun ... -m prime_megatron.train --config PATH --resume [overrides]`; the
executors decide where it runs:

- `build_slurm_executor(SlurmSpec(...))`: an sbatch job (through a local `sbatch`, or over
  SSH to a cluster's login node), one torchrun per node with c10d rendezvous, an optional
  pyxis container, and `--signal` so that the trainer checkpoints before the time limit.
- `build_local_executor(nproc_per_node=...)`: torchrun on this machine (CPU/gloo or GPUs).

Both run the trainer in `workdir` (the repository checkout on the machine that runs it),
because experiment YAMLs name data and checkpoint paths relative to it; nemo-run's own code
packaging is therefore not used. `run_experiment` submits and waits, or with `dryrun=True`
prints the sbatch script it would submit.

Left out: nemo-run's Python-function tasks (`run.Partial`) -- the trainer is configured by
YAML, not by a Python config object -- and multi-task experiments.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

TRAIN_MODULE = "prime_megatron.train"
REPO_ROOT = str(Path(__file__).resolve().parents[1])

# torchrun reads PET_<FLAG> as its --<flag>: forward USR1 (the --signal below) to the workers
# instead of dying of it, and give them time to write the checkpoint.
_SIGNAL_ENV = {"PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}


def _nemo_run():
    try:
        import nemo_run
    except ImportError as err:  # nemo-run 0.11 breaks on newer leptonai releases
        raise ImportError("prime_megatron.launch needs nemo-run: pip install 'nemo-run' "
                          f"'leptonai==0.27.3' (or the [launch] extra) -- {err}") from err
    return nemo_run


@dataclass(frozen=True)
class SlurmSpec:
    """Where and how big the Slurm job is. The experiment itself is in the YAML."""
    nodes: int = 1
    nproc_per_node: int = 8  # torchrun workers per node (GPUs per node on a GPU cluster)
    gpus_per_node: Optional[int] = 8  # None for CPU-only partitions
    cpus_per_task: Optional[int] = None
    account: str = ""
    partition: Optional[str] = None
    time: str = "04:00:00"
    signal_s: int = 600  # USR1 this many seconds before the time limit
    container_image: Optional[str] = None  # pyxis/enroot image; None runs on the host
    workdir: str = REPO_ROOT  # the repository checkout on the cluster
    ssh_host: Optional[str] = None  # None: sbatch on this machine
    job_dir: str = ""  # with ssh_host: where sbatch scripts and logs go on the cluster
    ssh_user: Optional[str] = None

    def __post_init__(self):
        for name in ("nodes", "nproc_per_node", "signal_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"SlurmSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.ssh_host and not (self.ssh_user and self.job_dir):
            raise ValueError("SlurmSpec.ssh_user and SlurmSpec.job_dir are required with ssh_host")


def build_train_task(config: str, overrides: Sequence[str] = (), *, resume: bool = True):
    """The trainer as a nemo-run Script; torchrun wraps it through the executor's launcher."""
    run = _nemo_run()
    args = ["--config", config, *(["--resume"] if resume else []), *overrides]
    return run.Script(path=TRAIN_MODULE, m=True, entrypoint="python", args=list(args))


def build_slurm_executor(spec: SlurmSpec):
    run = _nemo_run()
    if spec.ssh_host:
        tunnel = run.SSHTunnel(host=spec.ssh_host, user=spec.ssh_user, job_dir=spec.job_dir)
    else:  # the sbatch script and logs stay in nemo-run's experiment dir ($NEMORUN_HOME)
        tunnel = run.LocalTunnel(job_dir="")
    container = {}
    srun_args = ["--chdir", spec.workdir]  # after nemo-run's own --chdir, so this one wins
    if spec.container_image:
        container = dict(container_image=spec.container_image,
                         container_mounts=[f"{spec.workdir}:{spec.workdir}"])
        srun_args = ["--container-workdir", spec.workdir]
    return run.SlurmExecutor(
        account=spec.account, partition=spec.partition, nodes=spec.nodes,
        ntasks_per_node=spec.nproc_per_node, gpus_per_node=spec.gpus_per_node,
        cpus_per_task=spec.cpus_per_task, time=spec.time, signal=f"USR1@{spec.signal_s}",
        launcher="torchrun", tunnel=tunnel, job_name_prefix="prime-", packager=run.Packager(), srun_args=srun_args,
        env_vars={**_SIGNAL_ENV, "PET_SHUTDOWN_TIMEOUT": str(max(spec.signal_s - 60, 30))},
        **container)


def build_local_executor(*, nproc_per_node: int = 2):
    """torchrun on this machine (in the directory `run_experiment` is given as `workdir`)."""
    run = _nemo_run()
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return run.LocalExecutor(ntasks_per_node=nproc_per_node, launcher="torchrun", env_vars=dict(_SIGNAL_ENV))


def _check_nemorun_home(home: str) -> None:
    # nemo-run rewrites every path containing "/nemo_run" (its in-container run dir), which
    # turns the sbatch --output paths under such a home into paths that do not exist.
    if "/nemo_run" in home:
        raise ValueError(f"NEMORUN_HOME={home!r} contains '/nemo_run', which nemo-run rewrites as its "
                         "container run dir; choose another directory name (default ~/.nemo_run is fine)")


def run_experiment(task, executor, *, name: str, dryrun: bool = False,
                   workdir: str = REPO_ROOT) -> Optional[dict]:
    """Submit `task` on `executor` and wait for it; returns {"status", "job_id", "local_dir"}.

    A local executor starts its processes in the submitting process's working directory,
    so submission happens inside `workdir` (a Slurm executor carries it in its srun args).
    With `dryrun` nothing is submitted: nemo-run prints the sbatch script (or the local
    command) it would run, and None is returned."""
    run = _nemo_run()
    _check_nemorun_home(run.config.get_nemorun_home())
    where = contextlib.chdir(workdir) if isinstance(executor, run.LocalExecutor) else contextlib.nullcontext()
    with where, run.Experiment(name, executor=executor, log_level="WARN") as exp:
        exp.add(task, name="train")
        if dryrun:
            exp.dryrun()
            return None
        exp.run(detach=False)
    job = exp.status(return_dict=True)["train"]
    return {"status": str(job["status"]), "job_id": job["job_id"], "local_dir": job["local_dir"]}
