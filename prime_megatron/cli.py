"""`prime-megatron {train,sft} --config X.yaml [a.b=value ...]`.

Without torchrun, the command runs as a single process (world size 1); under torchrun or
srun it uses the rendezvous those set. `--nproc N` starts N local processes on gloo/nccl
through torch.distributed.run, for a one-machine multi-rank run without typing torchrun.
"""
from __future__ import annotations

import os
import sys

COMMANDS = {"train": "prime_megatron.train", "sft": "prime_megatron.sft"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: prime-megatron {{{','.join(COMMANDS)}}} --config X.yaml [--nproc N] [a.b=value ...]",
              file=sys.stderr)
        sys.exit(2)
    command, rest = argv[0], argv[1:]
    nproc = 1
    if "--nproc" in rest:
        i = rest.index("--nproc")
        nproc = int(rest[i + 1])
        rest = rest[:i] + rest[i + 2:]
    if nproc > 1 and "RANK" not in os.environ:
        from torch.distributed.run import main as torchrun

        torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", COMMANDS[command], *rest])
        return
    if "RANK" not in os.environ:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import importlib

    importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    main()
