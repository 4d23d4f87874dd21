"""Save and load a megatron GPTModel with megatron-core `dist_checkpointing` (torch_dist format).

Every rank writes its own shards of one global checkpoint, keyed by megatron's sharded state
dict (global layer index as a prepended axis), so a checkpoint written at one TP/PP loads at
any other: dist_checkpointing reads the overlapping pieces. Vocab-padded tensors
(embedding, output layer) carry megatron's `allow_shape_mismatch`, so a different padded
vocabulary size also loads (the extra rows stay zero).

Writes are atomic: all ranks write into `<path>.tmp`, and rank 0 renames it to `path` only
after every rank has finished, so an interrupted save never leaves a complete-looking `path`.
Saves are synchronous (megatron's async writer starts a spawn-context Manager; scripts that
save must still have an `if __name__ == "__main__":` guard because the writer forks workers).

Left out: optimizer state (the trainer adds `optimizer.sharded_state_dict(...)` entries
through `extra_sharded`), async saves, and non-shared filesystems (all ranks must see `path`).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

MODEL_KEY = "model"
EXTRA_KEY = "extra_state"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(state: dict, path: str | os.PathLike, *, rank: int,
                 finalize: Callable[[Path], None] | None = None) -> None:
    """dist_checkpointing.save of `state` into `path` via `<path>.tmp` + rename (collective).

    finalize(tmp) runs on rank 0 after every rank has written and before the rename (to add
    side files such as the HF config).
    """
    from megatron.core import dist_checkpointing

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # leftover of an interrupted save
        tmp.mkdir(parents=True)
    _barrier()
    try:
        dist_checkpointing.save(state, str(tmp), async_sharded_save=False)
    except BaseException:
        if rank == 0:  # a failed save is never resumed: do not leave its pieces behind
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier()
    if rank == 0:
        if finalize is not None:
            finalize(tmp)
        publish_dir(tmp, path)
    _barrier()


def publish_dir(tmp: Path, path: Path) -> None:
    """Rename finished `tmp` to `path`; an existing `path` is replaced only after that succeeds."""
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def save_model_checkpoint(model, path: str | os.PathLike, *, parallel, extra_state: dict | None = None,
                          extra_sharded: dict | None = None, prefix: str = "") -> None:
    """Collective: every rank of `parallel` saves its shard of `model` into `path` (atomic).

    extra_state: picklable, saved once (rank 0) and returned by load_model_checkpoint.
    extra_sharded: more sharded entries (e.g. an optimizer's sharded_state_dict) saved alongside.
    prefix: prepended to every checkpoint key ("policy."), so several models can share one
        checkpoint; pass the same prefix to load and to the HF exporter.
    """
    state = {MODEL_KEY: model.sharded_state_dict(prefix=prefix), EXTRA_KEY: extra_state or {}}
    state.update(extra_sharded or {})
    save_sharded(state, path, rank=parallel.rank)


def _checkpoint_object_keys(path: str) -> set[str]:
    # Not re-exported by megatron.core.dist_checkpointing on 0.16; the serialization module has it.
    from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

    return {sh.key for sh in load_sharded_metadata(path).values()}


def _drop_absent_extra_state(sharded_sd: dict, path: str) -> list[str]:
    """Remove `_extra_state` objects the checkpoint lacks (converted checkpoints, local<->TE spec).

    Local-spec linears keep no extra state; TE keeps FP8 scaling state that is rebuilt on the
    first step. Returns the dropped state-dict names.
    """
    names = [n for n in sharded_sd if n.endswith("._extra_state")]
    if not names:
        return []
    present = _checkpoint_object_keys(path)
    dropped = [n for n in names if sharded_sd[n].key not in present]
    for name in dropped:
        del sharded_sd[name]
    return dropped


def check_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Raise naming `path` unless it is a finished dist_checkpointing checkpoint."""
    path = Path(path)
    if not (path / "metadata.json").is_file():
        hint = " (an unfinished save: .tmp)" if path.name.endswith(".tmp") else ""
        raise FileNotFoundError(f"{path}: not a dist_checkpointing checkpoint, metadata.json missing{hint}")
    return path


def load_model_checkpoint(model, path: str | os.PathLike, *, parallel, prefix: str = "") -> dict:
    """Collective: load this rank's shard of `model` from `path` (any TP/PP); returns extra_state."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    path = str(check_checkpoint_dir(path))
    sharded_sd = model.sharded_state_dict(prefix=prefix)
    dropped = {n.removeprefix(prefix) for n in _drop_absent_extra_state(sharded_sd, path)}
    loaded = dist_checkpointing.load({MODEL_KEY: sharded_sd}, path, strict=StrictHandling.RAISE_UNEXPECTED)
    state = {k.removeprefix(prefix): v for k, v in loaded[MODEL_KEY].items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in dropped]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{path}: rank {parallel.rank} could not load {missing} "
                           f"(unexpected: {result.unexpected_keys})")
    return loaded.get(EXTRA_KEY, {})
