"""Streaming read and write of Hugging Face safetensors checkpoints, one tensor at a time.

`SafetensorsReader` opens a single `model.safetensors` or a sharded checkpoint
(`model.safetensors.index.json`) and reads tensors by name through memory-mapped
`safe_open` handles, so only the tensor asked for is materialised.

`write_safetensors_shards` writes a sharded checkpoint plus its index file from an iterator
of tensors whose names, shapes and dtypes are declared up front: each shard's header is
written first and every tensor goes to disk as soon as it is produced, so host memory holds
one tensor, never a whole shard. A tqdm bar counts tensors and bytes.

Left out: pickle (`pytorch_model.bin`) checkpoints, which are refused with a message.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_DTYPE_CODES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


class SafetensorsReader:
    """Read tensors of an HF checkpoint dir by name, one at a time (memory-mapped)."""

    def __init__(self, hf_dir: str | os.PathLike):
        self.dir = Path(hf_dir)
        self.weight_map = self._read_weight_map()
        self._handles: dict[str, object] = {}

    def _read_weight_map(self) -> dict[str, str]:
        index = self.dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{index}: malformed safetensors index ({err!r}); "
                                 "expected a JSON object with a 'weight_map'") from None
            missing = sorted({f for f in weight_map.values() if not (self.dir / f).is_file()})
            if missing:
                raise FileNotFoundError(f"{index} names shard(s) that do not exist: {missing}")
            return dict(weight_map)
        single = self.dir / SINGLE_NAME
        if single.is_file():
            with self._open(SINGLE_NAME) as handle:
                return {name: SINGLE_NAME for name in handle.keys()}
        if not self.dir.is_dir():
            raise FileNotFoundError(f"HF checkpoint directory {self.dir} does not exist")
        raise FileNotFoundError(f"{self.dir}: neither {INDEX_NAME} nor {SINGLE_NAME} found "
                                "(only safetensors checkpoints are supported)")

    def _open(self, file_name: str):
        try:
            return safe_open(str(self.dir / file_name), framework="pt")
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ValueError(f"{self.dir / file_name}: not a readable safetensors file ({err})") from None

    def _handle(self, name: str):
        if name not in self.weight_map:
            raise KeyError(f"{self.dir}: tensor {name!r} is missing from the checkpoint")
        file_name = self.weight_map[name]
        if file_name not in self._handles:
            self._handles[file_name] = self._open(file_name)
        return self._handles[file_name], file_name

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        handle, _ = self._handle(name)
        return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str, *, expected_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Tensor `name`; with expected_shape, a mismatch raises naming the file and tensor."""
        handle, file_name = self._handle(name)
        if expected_shape is not None:
            shape = tuple(handle.get_slice(name).get_shape())
            if shape != tuple(expected_shape):
                raise ValueError(f"{self.dir / file_name}: tensor {name!r} has shape {shape}, "
                                 f"expected {tuple(expected_shape)} from config.json")
        return handle.get_tensor(name)

    def file_of(self, name: str) -> Path:
        self._handle(name)
        return self.dir / self.weight_map[name]


def plan_shards(specs: list[tuple[str, tuple[int, ...], torch.dtype]],
                max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...], torch.dtype]]]:
    """Group tensors, in order, into shards of at most max_shard_bytes (a bigger tensor gets its own)."""
    shards: list[list] = [[]]
    size = 0
    for spec in specs:
        nbytes = _nbytes(spec[1], spec[2])
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def _nbytes(shape, dtype) -> int:
    numel = 1
    for d in shape:
        numel *= d
    return numel * torch.empty((), dtype=dtype).element_size()


def _header(shard) -> bytes:
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype in shard:
        if dtype not in _DTYPE_CODES:
            raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors here")
        end = offset + _nbytes(shape, dtype)
        entries[name] = {"dtype": _DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _write_tensor(handle, name: str, tensor: torch.Tensor, spec) -> int:
    want_name, want_shape, want_dtype = spec
    if name != want_name or tuple(tensor.shape) != tuple(want_shape) or tensor.dtype != want_dtype:
        raise ValueError(f"tensor stream out of plan: got {name!r} {tuple(tensor.shape)} {tensor.dtype}, "
                         f"expected {want_name!r} {tuple(want_shape)} {want_dtype}")
    data = tensor.detach().contiguous().cpu().view(torch.uint8).numpy()
    handle.write(memoryview(data))
    return data.nbytes


def write_safetensors_shards(out_dir: str | os.PathLike, specs: list[tuple[str, tuple[int, ...], torch.dtype]],
                             tensors: Iterable[tuple[str, torch.Tensor]], *, max_shard_bytes: int = 4 << 30,
                             progress: bool = True) -> list[str]:
    """Write `tensors` (yielded in `specs` order) as sharded safetensors + index into out_dir.

    Returns the shard file names. A single shard is named model.safetensors (no index), as
    transformers does.
    """
    out_dir = Path(out_dir)
    shards = plan_shards(specs, max_shard_bytes)
    names = ([SINGLE_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    total = sum(_nbytes(s[1], s[2]) for s in specs)
    stream: Iterator = iter(tensors)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="write safetensors", disable=not progress)
    written = 0
    with bar:
        for file_name, shard in zip(names, shards):
            with open(out_dir / file_name, "wb") as handle:
                handle.write(_header(shard))
                for spec in shard:
                    name, tensor = next(stream)
                    bar.update(_write_tensor(handle, name, tensor, spec))
                    written += 1
                    bar.set_postfix(tensors=f"{written}/{len(specs)}")
    if next(stream, None) is not None:
        raise ValueError("tensor stream yielded more tensors than planned")
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {spec[0]: file_name for file_name, shard in zip(names, shards) for spec in shard}}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return names
