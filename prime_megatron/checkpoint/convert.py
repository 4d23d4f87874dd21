"""HF safetensors <-> megatron dist_checkpointing conversion, streamed tensor by tensor.

HF -> megatron (`convert_hf_to_megatron`) runs in one process. Each megatron tensor is built
from its HF tensors (hf_mapping), cut into the chunks a TP=tp x PP=pp job would hold, and each
chunk is written to its own scratch file and mapped back read-only (`torch.from_file`, a
private mmap). The dist_checkpointing save then writes from those mappings: the process's own
(anonymous) memory holds one tensor at a time and the rest is clean page cache the kernel can
drop, so host memory stays far below the model size. The checkpoint has the same keys and
chunks as one saved by a tp x pp training job and loads at any TP/PP (megatron_io).

megatron -> HF (`convert_megatron_to_hf`) loads one full tensor (one layer of one key) at a
time with dist_checkpointing (which gathers it from whatever TP/PP chunks were saved), splits
it with hf_mapping and streams it into sharded safetensors (hf_io).

Both write into a temporary sibling directory renamed at the end; on any error the output
path is left as it was. Inputs are checked before anything is written: a missing config,
shard, tensor or checkpoint key, or a shape that disagrees with config.json, raises naming the
file and the tensor.

Left out: converting optimizer state, and models other than Qwen2/Llama (load_arch refuses).
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from prime_megatron.checkpoint import hf_mapping as hm
from prime_megatron.checkpoint.hf_io import INDEX_NAME, SafetensorsReader, write_safetensors_shards
from prime_megatron.checkpoint.megatron_io import check_checkpoint_dir, publish_dir, save_sharded
from prime_megatron.models.arch import load_arch

HF_CONFIG_SUBDIR = "hf_config"  # HF config + tokenizer kept inside a converted megatron checkpoint
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", INDEX_NAME, "pytorch_model.bin.index.json")


@contextlib.contextmanager
def single_process_group():
    """A world-size-1 gloo group for dist_checkpointing, unless one is already running."""
    from prime_megatron.cpu_compat import apply_cpu_compat

    apply_cpu_compat()  # dist_checkpointing calls torch.cuda.synchronize; no-op with CUDA present
    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise RuntimeError("checkpoint conversion runs in a single process; "
                               f"found a process group of world_size={dist.get_world_size()}")
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _glibc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS.

    glibc raises its mmap threshold after large frees, so later tensors of a few MB come from
    the heap and, once freed, stay in the process (measured: +250 MB over a 660 MB conversion).
    Trimming after each tensor keeps the footprint at about one tensor.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def checkpoint_key(name: str, prefix: str = "") -> tuple[str, int | None]:
    """Global megatron param name -> (dist_checkpointing key, global layer or None)."""
    parsed = hm.parse_megatron_name(name)
    if parsed.layer is None:
        return prefix + parsed.suffix, None
    return prefix + "decoder.layers." + hm.TE_FUSED_NORMS.get(parsed.suffix, parsed.suffix), parsed.layer


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"output {out_dir} already exists and is not an empty directory; "
                              "choose a new path or remove it")


@contextlib.contextmanager
def _work_dirs(out_dir: Path, *names: str) -> Iterator[list[Path]]:
    """Fresh sibling work dirs `.{out}.{name}`, removed on exit (published ones are gone already)."""
    dirs = [out_dir.with_name(f".{out_dir.name}.{name}") for name in names]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    try:
        yield dirs
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def _copy_hf_side_files(src: Path, dst: Path, *, dtype: torch.dtype | None) -> None:
    """config.json (dtype updated), generation config and tokenizer files; never weights."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file() and not item.name.endswith(_WEIGHT_FILES) and item.name != "config.json":
            shutil.copy2(item, dst / item.name)
    config = json.loads((src / "config.json").read_text())
    if dtype is not None:  # the dtype the weights are written in (transformers 5 reads "dtype")
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
        if "dtype" in config:
            config["dtype"] = config["torch_dtype"]
    (dst / "config.json").write_text(json.dumps(config, indent=2))


# ---------------------------------------------------------------- HF -> megatron

def _check_hf_tensors(reader: SafetensorsReader, arch) -> None:
    expected = hm.hf_param_shapes(arch)
    # A tied checkpoint may still store lm_head (a copy of the embedding); anything else unknown
    # (e.g. Llama's o_proj.bias under attention_bias=true) would be silently lost.
    unknown = sorted(n for n in reader.weight_map if n not in expected and n != "lm_head.weight")
    if unknown:
        raise ValueError(f"{reader.dir}: tensors not supported by the conversion: {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    for name, shape in expected.items():
        if name not in reader.weight_map:
            raise KeyError(f"{reader.dir}: tensor {name!r} expected by config.json is missing "
                           f"(files: {sorted(set(reader.weight_map.values()))})")
        got = reader.shape(name)
        if got != shape:
            raise ValueError(f"{reader.file_of(name)}: tensor {name!r} has shape {got}, "
                             f"expected {shape} from config.json")


def _chunks(name: str, full: torch.Tensor, *, tp: int) -> list[tuple[torch.Tensor, tuple | None]]:
    """(chunk, (axis, index, fragments) or None) as a TP=tp job saves `name` (see module doc)."""
    dim = hm.tp_split_dim(name)
    if dim is None:
        return [(full, None)]
    # fc1 = [gate; up]: megatron's swiglu factory saves gate_r at r and up_r at tp + r of 2*tp.
    frags = 2 * tp if hm.parse_megatron_name(name).tp_kind == "gated_column" else tp
    return [(c, (dim, i, frags)) for i, c in enumerate(full.chunk(frags, dim=dim))]


def _mapped_copy(tensor: torch.Tensor, path: Path) -> torch.Tensor:
    """Write `tensor` to `path` and return a read-only private memory map of it (same shape)."""
    data = tensor.contiguous()
    data.view(torch.uint8).numpy().tofile(path)
    return torch.from_file(str(path), shared=False, size=data.numel(), dtype=data.dtype).view(data.shape)


def _sharded_tensors(name, full, *, arch, tp, scratch: Path, start: int) -> list:
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    key, layer = checkpoint_key(name)
    out = []
    for i, (chunk, frag) in enumerate(_chunks(name, full, tp=tp)):
        data = _mapped_copy(chunk, scratch / f"{start + i:06d}.bin")
        prepend = [] if layer is None else [(0, layer, arch.num_layers)]
        offsets = prepend + ([] if frag is None else [(frag[0] + len(prepend), frag[1], frag[2])])
        out.append(ShardedTensor.from_rank_offsets(key, data, *offsets, replica_id=0,
                                                   prepend_axis_num=len(prepend)))
    return out


def _build_megatron_state(reader, arch, *, tp, dtype, scratch: Path, progress: bool) -> dict:
    from tqdm import tqdm

    padded = arch.padded_vocab_size(tp)
    names = hm.megatron_param_names(arch)
    state: dict[str, list] = {}
    with tqdm(total=len(names), unit="tensor", desc="hf -> megatron", disable=not progress) as bar:
        for name in names:
            sources = hm.hf_names_for(name, arch)
            hf = {n: reader.get(n) for n in sources}
            full = hm.hf_to_megatron(name, hf, arch, padded_vocab_size=padded)
            full = full.to(dtype or full.dtype)
            state[name] = _sharded_tensors(name, full, arch=arch, tp=tp, scratch=scratch,
                                           start=sum(len(v) for v in state.values()))
            del hf, full  # only the memory maps stay
            release_freed_memory()
            bar.update(1)
            bar.set_postfix(GB=f"{sum(t.data.nbytes for v in state.values() for t in v) / 1e9:.2f}")
    return state


def convert_hf_to_megatron(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *, tp: int = 1,
                           pp: int = 1, dtype: torch.dtype | None = None, progress: bool = True) -> Path:
    """HF Qwen2/Llama safetensors dir -> dist_checkpointing dir laid out for tp x pp.

    dtype=None keeps the HF tensors' dtype. The HF config and tokenizer are kept in
    `out_dir/hf_config` for the way back.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"HF checkpoint directory {hf_dir} does not exist")
    _check_out_dir(out_dir)
    arch = load_arch(hf_dir)
    arch.check_tp(tp)
    if pp < 1 or arch.num_layers % pp != 0:
        raise ValueError(f"num_layers={arch.num_layers} is not divisible by pp={pp}")
    reader = SafetensorsReader(hf_dir)
    _check_hf_tensors(reader, arch)
    with _work_dirs(out_dir, "scratch") as (scratch,), single_process_group():
        scratch.mkdir()
        state = _build_megatron_state(reader, arch, tp=tp, dtype=dtype, scratch=scratch, progress=progress)

        def finalize(tmp: Path) -> None:
            _copy_hf_side_files(hf_dir, tmp / HF_CONFIG_SUBDIR, dtype=dtype)
            info = {"source": str(hf_dir), "tp": tp, "pp": pp, "padded_vocab_size": arch.padded_vocab_size(tp)}
            (tmp / "conversion.json").write_text(json.dumps(info, indent=2))

        save_sharded({"model": state}, out_dir, rank=0, finalize=finalize)
    return out_dir


# ---------------------------------------------------------------- megatron -> HF

def _checkpoint_metadata(ckpt: Path, arch, prefix: str) -> dict:
    """Checkpoint key -> metadata ShardedTensor; raises naming the key if one is absent or misshapen."""
    from megatron.core import dist_checkpointing

    meta = dist_checkpointing.load_tensors_metadata(str(ckpt))
    padded = None
    for name in hm.megatron_param_names(arch):
        key, layer = checkpoint_key(name, prefix)
        if key not in meta:
            raise KeyError(f"{ckpt}: checkpoint has no tensor {key!r} (needed for {name})")
        got = tuple(meta[key].global_shape)
        if hm.parse_megatron_name(name).tp_kind == "vocab":
            padded = got[0]  # any padding >= vocab_size is fine; it is dropped
        want = hm.megatron_full_shape(name, arch, padded_vocab_size=padded or arch.vocab_size)
        want = want if layer is None else (arch.num_layers, *want)
        if got != want or (padded is not None and padded < arch.vocab_size):
            raise ValueError(f"{ckpt}: tensor {key!r} has shape {got}, expected {want} from config.json")
    return meta


def _request(key: str, layer: int | None, meta: dict):
    """A ShardedTensor asking for the whole of `key` (or of one layer of it), nothing else."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    shape, dtype = tuple(meta[key].global_shape), meta[key].dtype
    if layer is None:
        return ShardedTensor.from_rank_offsets(key, torch.empty(shape, dtype=dtype), replica_id=0)
    # Layer `layer` as a [1, ...] block of the [num_layers, ...] tensor. (A prepended axis would
    # take megatron's legacy path, which expects the other layers on other ranks.)
    return ShardedTensor.from_rank_offsets(key, torch.empty((1, *shape[1:]), dtype=dtype),
                                           (0, layer, shape[0]), replica_id=0)


def _load_group(ckpt: Path, names: list[str], meta: dict, prefix: str) -> dict[str, torch.Tensor]:
    """Full tensors `names` (one layer's, or the non-layer ones) in one dist_checkpointing load."""
    from megatron.core import dist_checkpointing

    keys = {name: checkpoint_key(name, prefix) for name in names}
    request = {name: _request(key, layer, meta) for name, (key, layer) in keys.items()}
    # Only a piece of each checkpoint tensor is asked for: the whole-tensor access check would fail.
    loaded = dist_checkpointing.load(request, str(ckpt), validate_access_integrity=False)
    return {name: loaded[name] if keys[name][1] is None else loaded[name][0] for name in names}


def _hf_tensor_stream(ckpt: Path, meta: dict, arch, dtype, prefix) -> Iterator[tuple[str, torch.Tensor]]:
    """HF tensors in megatron_param_names order; one layer in memory at a time."""
    names = hm.megatron_param_names(arch)
    for _, group in itertools.groupby(names, key=lambda n: hm.parse_megatron_name(n).layer):
        fulls = _load_group(ckpt, list(group), meta, prefix)
        for name, full in fulls.items():
            for hf_name, tensor in hm.megatron_to_hf(name, full, arch):
                yield hf_name, tensor.to(dtype or tensor.dtype).contiguous()
        del fulls, full, tensor
        release_freed_memory()


def convert_megatron_to_hf(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                           hf_config_dir: str | os.PathLike | None = None, dtype: torch.dtype | None = None,
                           max_shard_bytes: int = 4 << 30, key_prefix: str = "", progress: bool = True) -> Path:
    """dist_checkpointing model checkpoint (any TP/PP) -> HF safetensors dir with config + tokenizer.

    hf_config_dir defaults to `ckpt_dir/hf_config` (written by convert_hf_to_megatron).
    dtype=None keeps the checkpoint's dtype. key_prefix selects one model of a checkpoint that
    holds several (the `prefix` given to save_model_checkpoint, e.g. "policy.").
    """
    ckpt, out_dir = check_checkpoint_dir(ckpt_dir), Path(out_dir)
    _check_out_dir(out_dir)
    config_dir = Path(hf_config_dir) if hf_config_dir is not None else ckpt / HF_CONFIG_SUBDIR
    if not (config_dir / "config.json").is_file():
        raise FileNotFoundError(f"{config_dir / 'config.json'} not found; pass --hf-config-dir with the "
                                "HF config.json and tokenizer of this model")
    arch = load_arch(config_dir)
    with _work_dirs(out_dir, "tmp") as (tmp,), single_process_group():
        meta = _checkpoint_metadata(ckpt, arch, key_prefix)
        shapes = hm.hf_param_shapes(arch)
        specs = [(hf_name, shapes[hf_name], dtype or meta[checkpoint_key(name, key_prefix)[0]].dtype)
                 for name in hm.megatron_param_names(arch) for hf_name in hm.hf_names_for(name, arch)]
        tmp.mkdir()
        write_safetensors_shards(tmp, specs, _hf_tensor_stream(ckpt, meta, arch, dtype, key_prefix),
                                 max_shard_bytes=max_shard_bytes, progress=progress)
        _copy_hf_side_files(config_dir, tmp, dtype=specs[0][2])
        publish_dir(tmp, out_dir)
    return out_dir

