"""Preemption: SIGTERM / SIGUSR1 (what Slurm sends before a time limit or preemption, see
slurm/*.sh --signal) ask the trainer to checkpoint at the end of the current step and exit.

The flag is agreed across ranks (a MAX all-reduce) because a signal may reach only some of them.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist


class StopRequest:
    """SIGTERM / SIGUSR1 (Slurm preemption) ask for a checkpoint at the end of the current step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        flag = torch.tensor([float(self.requested)], device=device)  # NCCL reduces device tensors only
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
