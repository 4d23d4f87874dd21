"""A trivial distributed job for the launch tests, run under torchrun as `-m tests.launch.probe`.

Every rank all-reduces its rank on gloo; rank 0 then writes one line to $PROBE_OUT:
"world=<W> sum=<0+1+...+W-1> cwd=<working dir> args=<its command-line arguments>".
With PROBE_WAIT_SIGNAL=1 each rank then waits (up to 120 s) for SIGUSR1, the launchers'
checkpoint signal, and rank 0 appends "signal=USR1" -- what the trainer would checkpoint on.
It imports only from the repository root, which is therefore checked to be the job's cwd.
"""
import datetime
import os
import signal
import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    received = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    value = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(value)
    rank0 = dist.get_rank() == 0
    if rank0:
        with open(os.environ["PROBE_OUT"], "w") as fh:
            fh.write(f"world={dist.get_world_size()} sum={int(value.item())} cwd={os.getcwd()} "
                     f"args={' '.join(sys.argv[1:])}\n")
    if os.environ.get("PROBE_WAIT_SIGNAL") == "1":
        deadline = time.monotonic() + 120
        while not received and time.monotonic() < deadline:
            time.sleep(0.2)
        if rank0 and received:
            with open(os.environ["PROBE_OUT"], "a") as fh:
                fh.write("signal=USR1\n")
        sys.exit(0 if received else 3)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
