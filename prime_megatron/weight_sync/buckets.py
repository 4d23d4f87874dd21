"""Group a stream of (name, tensor) pairs into size-bounded buckets, and flatten a bucket.

`bucketize` is lazy: it holds at most one bucket (plus the tensor that overflows it), so
the whole model is never materialised at once. A single tensor larger than the bound
travels alone in its own bucket rather than being split, because receivers (SGLang's
`load_weights`, `load_state_dict`) load whole named tensors.

`flatten_bucket` packs a bucket into one contiguous byte buffer (one send / one IPC
handle / one broadcast per bucket instead of one per tensor) with the metadata needed
to cut it apart again; `unflatten_bucket` is its inverse. Left out: compression and
dtype casting (the sender chooses the dtype before bucketing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

DEFAULT_BUCKET_BYTES = 512 << 20


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def bucketize(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Yield lists of (name, tensor) whose total size is <= `bucket_bytes`, in stream order.

    A tensor bigger than `bucket_bytes` is yielded alone. Empty input yields nothing.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor_nbytes(tensor)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


@dataclass(frozen=True)
class FlatBucket:
    """One bucket as a single uint8 buffer; tensor i lives at bytes spans[i] = (start, end)."""

    buffer: torch.Tensor
    names: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]
    spans: tuple[tuple[int, int], ...]

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()


def _spans(bucket, align_bytes: int) -> list[tuple[int, int]]:
    spans, end = [], 0
    for _, tensor in bucket:
        start = -(-end // align_bytes) * align_bytes
        end = start + tensor_nbytes(tensor)
        spans.append((start, end))
    return spans


def flatten_bucket(bucket: list[tuple[str, torch.Tensor]], *, device=None, align_bytes: int = 16,
                   out: torch.Tensor | None = None) -> FlatBucket:
    """Copy every tensor of `bucket` into one contiguous uint8 buffer.

    Each tensor starts at a multiple of `align_bytes`, so that it can be viewed back as its
    dtype (a view needs an offset divisible by the element size). `align_bytes=1` packs them
    back to back, the layout SGLang's FlattenedTensorBucket rebuilds on the receiving side.
    `out`: a uint8 staging buffer to reuse across buckets (its first bytes are the result, so
    the previous bucket must have been consumed); a fresh buffer is allocated when None.
    """
    if not bucket:
        raise ValueError("flatten_bucket: bucket is empty")
    if align_bytes < 1:
        raise ValueError(f"align_bytes must be >= 1, got {align_bytes}")
    spans = _spans(bucket, align_bytes)
    if out is None:
        device = bucket[0][1].device if device is None else device
        buffer = torch.empty(spans[-1][1], dtype=torch.uint8, device=device)
    elif out.dtype != torch.uint8 or out.dim() != 1 or out.numel() < spans[-1][1]:
        raise ValueError(f"flatten_bucket: out must be a 1-D uint8 tensor of >= {spans[-1][1]} bytes, "
                         f"got {out.dtype} {tuple(out.shape)}")
    else:
        buffer = out[: spans[-1][1]]
    gap_start = 0
    for (_, tensor), (start, end) in zip(bucket, spans):
        buffer[gap_start:start].zero_()  # alignment padding: defined bytes, not stale memory
        gap_start = end
        # view(uint8) of a contiguous tensor reinterprets its bytes without a copy; the one
        # copy is into the buffer.
        buffer[start:end].copy_(tensor.detach().contiguous().reshape(-1).view(torch.uint8))
    return FlatBucket(
        buffer=buffer,
        names=tuple(name for name, _ in bucket),
        dtypes=tuple(tensor.dtype for _, tensor in bucket),
        shapes=tuple(tuple(tensor.shape) for _, tensor in bucket),
        spans=tuple(spans),
    )


def unflatten_bucket(flat: FlatBucket) -> list[tuple[str, torch.Tensor]]:
    """Views (no copy) into `flat.buffer` with the original names, dtypes and shapes."""
    return [
        (name, flat.buffer[start:end].view(dtype).reshape(shape))
        for name, dtype, shape, (start, end) in zip(flat.names, flat.dtypes, flat.shapes, flat.spans)
    ]
