"""Run a test body on N local processes with gloo, failing (not hanging) on timeout.

    results = run_distributed(_worker, world_size=4, args=(cfg,), timeout_s=180)

`_worker(rank, world_size, *args)` must be a module-level function (it is pickled
by name into spawned processes). The environment that torch.distributed's env://
rendezvous reads (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) is set
for it. The returned list holds each rank's return value; an exception in any rank
is re-raised here with that rank's traceback, and a run that outlives `timeout_s`
is killed and reported as a failure.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import traceback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(fn, rank, world_size, port, args, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    import datetime
    import pickle

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        # Plain pickle copies tensor storage into the message; the queue's own pickler would
        # pass shared memory that disappears when this process exits.
        value = pickle.dumps(fn(rank, world_size, *args))
        if dist.is_available() and dist.is_initialized():
            # Rank 0 hosts the rendezvous store: no rank may tear down while a peer still uses it.
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=120))
        results.put((rank, "ok", value))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn, world_size: int, args: tuple = (), timeout_s: float = 240.0) -> list:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        # Not daemonic: dist_checkpointing.save starts writer processes of its own. Cleanup
        # below kills any rank still alive, so nothing outlives the test.
        ctx.Process(target=_entry, args=(fn, rank, world_size, port, args, results), daemon=False)
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    outputs: dict[int, object] = {}
    try:
        import time

        deadline = time.monotonic() + timeout_s
        while len(outputs) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"distributed test timed out after {timeout_s:.0f}s; ranks that reported: {sorted(outputs)}"
                )
            try:
                rank, status, value = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and results.empty():
                    raise RuntimeError(f"rank process died with exit code {dead[0].exitcode} before reporting")
                continue
            if status == "error":
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            outputs[rank] = pickle.loads(value)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    return [outputs[rank] for rank in range(world_size)]
