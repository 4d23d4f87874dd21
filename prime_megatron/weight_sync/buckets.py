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
    """One bucket as a single uint8 buffer; tensor i lives at bytes [offsets[i], offsets[i+1])."""

    buffer: torch.Tensor
    names: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()


def flatten_bucket(bucket: list[tuple[str, torch.Tensor]], *, device=None) -> FlatBucket:
    """Copy every tensor of `bucket` into one fresh contiguous uint8 buffer."""
    if not bucket:
        raise ValueError("flatten_bucket: bucket is empty")
    offsets = [0]
    for _, tensor in bucket:
        offsets.append(offsets[-1] + tensor_nbytes(tensor))
    device = bucket[0][1].device if device is None else device
    buffer = torch.empty(offsets[-1], dtype=torch.uint8, device=device)
    for (_, tensor), start, end in zip(bucket, offsets[:-1], offsets[1:]):
        # view(uint8) of a contiguous tensor reinterprets its bytes without a copy; the one
        # copy is into the buffer.
        buffer[start:end].copy_(tensor.detach().contiguous().reshape(-1).view(torch.uint8))
    return FlatBucket(
        buffer=buffer,
        names=tuple(name for name, _ in bucket),
        dtypes=tuple(tensor.dtype for _, tensor in bucket),
        shapes=tuple(tuple(tensor.shape) for _, tensor in bucket),
        offsets=tuple(offsets),
    )


def unflatten_bucket(flat: FlatBucket) -> list[tuple[str, torch.Tensor]]:
    """Views (no copy) into `flat.buffer` with the original names, dtypes and shapes."""
    out = []
    for i, name in enumerate(flat.names):
        chunk = flat.buffer[flat.offsets[i] : flat.offsets[i + 1]]
        out.append((name, chunk.view(flat.dtypes[i]).reshape(flat.shapes[i])))
    return out
