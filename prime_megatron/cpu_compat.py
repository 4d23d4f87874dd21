"""Let megatron-core run on a CPU-only torch, with gloo, by redirecting its CUDA-only calls.

megatron-core assumes a GPU in a few hundred places that have nothing to do with the maths
(where to allocate a buffer, which stream to wait on, which tensor type string to expect).
`apply_cpu_compat()` redirects exactly those calls to the CPU when CUDA is absent, so the
production code paths (GPTModel, the pipeline schedules, megatron DDP, the
DistributedOptimizer, dist_checkpointing) run unchanged on a laptop or in CI. It is called
by `prime_megatron.parallel.init_parallel`; nothing else in the project touches torch.cuda.

Redirections, and why each is needed (megatron-core 0.16.1 .. 0.19):

- `torch.cuda.current_device()` returns `torch.device("cpu")`. It is megatron's way of
  saying "the local accelerator" (~175 call sites: rotary frequencies, TP communication
  buffers, cross entropy, the pipeline p2p buffers, DDP grad buffers).
- A global `TorchFunctionMode` rewrites `device="cuda..."` (or an int device index) to the
  CPU in tensor factories, turns `pin_memory=True` off, and keeps `Tensor.cuda()` and
  `Tensor.to("cuda")` on the CPU. The pipeline schedules, the default causal mask and the
  optimizer hard-code "cuda".
- `Tensor.type()` (no argument) reports `torch.cuda.FloatTensor` etc. for CPU tensors: the
  optimizer and grad clipping assert on those strings. `Tensor.type("torch.cuda.X")`
  converts to the CPU type instead.
- `torch.cuda.synchronize`, `torch.cuda.Event`, `torch.cuda.Stream`, `torch.cuda.current_stream`,
  `torch.cuda.default_stream`, `torch.cuda.stream`, `torch.cuda.nvtx.range_push/pop`,
  `torch.cuda.empty_cache`: no-ops (checkpoint save, inference timing, DDP on 0.19,
  profiling ranges). A CPU executes in program order, so there is nothing to wait for.
- `torch.cuda.memory_allocated` / `max_memory_allocated` / `memory_reserved` report 0:
  megatron only logs them.

What it deliberately leaves out: the RNG tracker (init_parallel asks megatron for its
no-op inference tracker on CPU instead of faking CUDA generators), fused kernels (the
builder turns them off in TransformerConfig), and Transformer Engine (the builder falls
back to the local layer spec). `torch.cuda.is_available()` keeps returning False, so code
that branches on it still sees the truth.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False
_CPU = torch.device("cpu")


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int means "cuda:<int>" to torch when passed as device=.
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placement arguments to the CPU on every torch call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.pin_memory:
            return args[0]
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = dict(kwargs, device=_CPU)
        if kwargs.get("pin_memory"):
            kwargs = dict(kwargs, pin_memory=False)
        if func is torch.Tensor.to and args:
            args = tuple(_CPU if (i > 0 and _is_cuda_device(a) and not isinstance(a, int)) else a
                         for i, a in enumerate(args))
        return func(*args, **kwargs)


_TENSOR_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
    "torch.ByteTensor": "torch.cuda.ByteTensor",
    "torch.BoolTensor": "torch.cuda.BoolTensor",
}


def _patch_tensor_type() -> None:
    original = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None:
            name = original(self)
            return _TENSOR_TYPE_NAMES.get(name, name)
        if isinstance(dtype, str):
            dtype = dtype.replace("torch.cuda.", "torch.")
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_


class _NoOpEvent:
    """Stands in for torch.cuda.Event: records nothing, reports zero elapsed time."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait(self, *args, **kwargs):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


class _NoOpStream:
    """Stands in for a CUDA stream: work on the CPU is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event or _NoOpEvent()

    def synchronize(self):
        pass


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: _CPU
    cuda.synchronize = lambda *a, **k: None
    cuda.Event = _NoOpEvent
    cuda.Stream = _NoOpStream
    cuda.current_stream = lambda *a, **k: _NoOpStream()
    cuda.default_stream = lambda *a, **k: _NoOpStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.empty_cache = lambda: None
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.nvtx.range_push = lambda *a, **k: None
    cuda.nvtx.range_pop = lambda *a, **k: None


def apply_cpu_compat() -> bool:
    """Apply the redirections once when CUDA is absent. Returns True when they are active."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if not _APPLIED:
        _patch_torch_cuda()
        _patch_tensor_type()
        # Entered for the rest of the process: megatron allocates on "cuda" from anywhere.
        _CudaToCpuMode().__enter__()
        _APPLIED = True
    return True


def cpu_compat_active() -> bool:
    return _APPLIED
