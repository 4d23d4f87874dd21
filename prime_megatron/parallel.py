"""One explicit description of how the ranks are laid out, and the only door to megatron's globals.

`init_parallel(tp=, pp=)` starts torch.distributed from the env:// rendezvous that torchrun
(or tests/distributed.py) sets up — nccl with CUDA, gloo without — applies the CPU
compatibility shims when CUDA is absent, initialises megatron-core's model-parallel state
and seeds its RNG tracker. It returns a frozen `ParallelState` that the rest of the project
receives as a keyword-only `parallel=` argument instead of reading megatron's
`parallel_state` module. dp is whatever is left: world_size // (tp * pp).

Left out on purpose: context, expert and virtual-pipeline parallelism (not needed for the
dense Qwen2/Llama models PRIME trains).
"""
from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from prime_megatron.cpu_compat import apply_cpu_compat


@dataclass(frozen=True)
class ParallelState:
    """Sizes, ranks and process groups of one tp x pp x dp layout."""

    tp: int
    pp: int
    dp: int
    world_size: int
    rank: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp_group: object = None
    pp_group: object = None
    dp_group: object = None
    model_parallel_group: object = None

    def __post_init__(self):
        for name in ("tp", "pp", "dp", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParallelState.{name} must be >= 1, got {getattr(self, name)}")
        if self.tp * self.pp * self.dp != self.world_size:
            raise ValueError(
                f"tp * pp * dp must equal world_size: tp={self.tp} x pp={self.pp} x dp={self.dp} "
                f"= {self.tp * self.pp * self.dp}, but world_size={self.world_size}"
            )
        for name, size in (("tp_rank", self.tp), ("pp_rank", self.pp), ("dp_rank", self.dp)):
            if not 0 <= getattr(self, name) < size:
                raise ValueError(f"ParallelState.{name}={getattr(self, name)} outside [0, {size})")

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def last_stage_global_rank(self) -> int:
        """Global rank of the last pipeline stage in this rank's pipeline group."""
        return dist.get_global_rank(self.pp_group, self.pp - 1) if self.pp > 1 else self.rank


def _init_process_group(timeout_s: float) -> None:
    if dist.is_initialized():
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"init_parallel needs the env:// rendezvous variables {missing}; launch with torchrun "
            "(or tests/distributed.run_distributed)"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def _seed_rng_tracker(seed: int, *, cpu: bool) -> None:
    from megatron.core import tensor_parallel

    kwargs = {}
    accepted = inspect.signature(tensor_parallel.model_parallel_cuda_manual_seed).parameters
    # On CPU there are no CUDA generators to track: megatron's inference tracker is a no-op.
    if cpu:
        kwargs["inference_rng_tracker"] = True
    # Re-initialising with another layout must replace the tracker, not reuse the old one.
    if "force_reset_rng" in accepted:
        kwargs["force_reset_rng"] = True
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, **kwargs)


def init_parallel(*, tp: int = 1, pp: int = 1, seed: int = 1234, timeout_s: float = 300) -> ParallelState:
    """Start torch.distributed + megatron model parallelism for a tp x pp x dp layout."""
    from megatron.core import parallel_state as mpu

    cpu = apply_cpu_compat()
    _init_process_group(timeout_s)
    world_size = dist.get_world_size()
    if tp < 1 or pp < 1 or world_size % (tp * pp) != 0:
        raise ValueError(
            f"world_size={world_size} is not divisible by tp={tp} x pp={pp}; dp would not be an integer"
        )
    if mpu.model_parallel_is_initialized():
        if (mpu.get_tensor_model_parallel_world_size(), mpu.get_pipeline_model_parallel_world_size()) == (tp, pp):
            return current_parallel_state()
        mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        distributed_timeout_minutes=max(1, int(timeout_s // 60)),
    )
    _seed_rng_tracker(seed, cpu=cpu)
    return current_parallel_state()


def current_parallel_state() -> ParallelState:
    """Snapshot megatron's initialised model-parallel state as a ParallelState."""
    from megatron.core import parallel_state as mpu

    return ParallelState(
        tp=mpu.get_tensor_model_parallel_world_size(),
        pp=mpu.get_pipeline_model_parallel_world_size(),
        dp=mpu.get_data_parallel_world_size(),
        world_size=dist.get_world_size(),
        rank=dist.get_rank(),
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        pp_rank=mpu.get_pipeline_model_parallel_rank(),
        dp_rank=mpu.get_data_parallel_rank(),
        tp_group=mpu.get_tensor_model_parallel_group(),
        pp_group=mpu.get_pipeline_model_parallel_group(),
        dp_group=mpu.get_data_parallel_group(),
        model_parallel_group=mpu.get_model_parallel_group(),
    )


def destroy_parallel() -> None:
    """Tear down megatron's model-parallel state and the process group (safe to call twice)."""
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
