"""Step metrics: TensorBoard, a JSONL file and a console line, written by rank 0 only.

Every stage returns plain ``dict[str, float]``; the trainer prefixes them by stage
(``rollout/``, ``prm/``, ``policy/``...) and hands them here once per step. The JSONL
file (``metrics.jsonl`` beside the TensorBoard events) is what the experiment tables
in ``docs/`` are built from. Deliberately absent: any aggregation across ranks (the
stages already return global values) and any third-party tracker.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch


class MetricsLogger:
    def __init__(self, log_dir: str | os.PathLike, *, enabled: bool, console_every: int = 1):
        self.enabled = enabled
        self.console_every = max(1, console_every)
        self._writer = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(log_dir))
            self._jsonl = open(Path(log_dir) / "metrics.jsonl", "a", buffering=1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        for key, value in clean.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")

    def console(self, step: int, metrics: dict[str, float], keys: list[str]) -> str | None:
        """Return (and print) a one-line summary of ``keys`` every ``console_every`` steps."""
        if not self.enabled or step % self.console_every:
            return None
        shown = [f"{k.split('/')[-1]}={metrics[k]:.4g}" for k in keys if k in metrics]
        line = f"step {step}: " + " ".join(shown)
        print(line, flush=True)
        return line

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._jsonl.close()


def compute_masked_stats(prefix: str, values: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean, std, max and min of `values` [B, T] over the positions where `mask` is 1."""
    picked = values[mask.bool()]
    return {f"{prefix}/mean": float(picked.mean()), f"{prefix}/std": float(picked.std()) if picked.numel() > 1 else 0.0,
            f"{prefix}/max": float(picked.max()), f"{prefix}/min": float(picked.min())}
