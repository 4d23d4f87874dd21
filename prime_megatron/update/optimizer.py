"""Megatron DDP + DistributedOptimizer (Adam) for a trainable model (policy or implicit PRM).

`wrap_ddp` wraps a GPTModel in megatron's DistributedDataParallel (contiguous fp32 grad
buffers, the layout the DistributedOptimizer shards over dp). `build_optimizer` builds the
DistributedOptimizer on that wrapped model: fp32 on CPU; on GPU, `bf16=True` keeps bf16
weights with fp32 main params, grads and Adam moments (the model must then be built with
params_dtype=torch.bfloat16).

The learning rate is constant; a schedule, if wanted, sets `param_group["lr"]` per step.
Left out: overlapped grad reduce / param gather (comm/compute overlap is a tuning knob for
large clusters), fp16 loss scaling, CPU optimizer offload.
"""
from __future__ import annotations

import torch

from prime_megatron.parallel import ParallelState


def wrap_ddp(model, *, parallel: ParallelState):
    """Wrap `model` in megatron DDP with the distributed optimizer's grad-buffer layout."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    if parallel.tp * parallel.pp * parallel.dp != parallel.world_size:
        raise ValueError("wrap_ddp: inconsistent ParallelState")
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=True,
    )
    return DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)


def build_optimizer(model, *, lr: float, weight_decay: float = 0.0, clip_grad: float = 1.0,
                    parallel: ParallelState, bf16: bool = False, adam_betas=(0.9, 0.999), adam_eps: float = 1e-8):
    """Megatron DistributedOptimizer (Adam) over a `wrap_ddp`-wrapped model."""
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    if not isinstance(model, DistributedDataParallel):
        raise TypeError("build_optimizer: `model` must be wrapped by prime_megatron.update.optimizer.wrap_ddp "
                        f"(megatron DDP owns the grad buffers the optimizer shards), got {type(model).__name__}")
    if bf16 and not torch.cuda.is_available():
        raise ValueError("build_optimizer: bf16=True needs a GPU; on CPU train in fp32 (bf16=False)")
    if lr <= 0:
        raise ValueError(f"build_optimizer: lr must be > 0, got {lr}")
    config = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=lr,
        weight_decay=weight_decay,
        clip_grad=clip_grad,
        adam_beta1=adam_betas[0],
        adam_beta2=adam_betas[1],
        adam_eps=adam_eps,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=True,
    )
    return get_megatron_optimizer(config, [model])
