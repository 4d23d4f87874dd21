"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is one dist_checkpointing directory `<dir>/step_<N>` holding the policy, the
PRM, both optimizers (sharded state, written by every rank) and each rank's RNG states, plus
`trainer_state.json` (step, prompt-stream cursor, the filter's buffered groups) written by
rank 0. The directory is written as `step_<N>.tmp` and renamed when complete, and
`<dir>/latest` (a one-line file, replaced atomically) is updated only after the rename, so a
crash at any moment leaves the previous checkpoint usable. Older checkpoints beyond
`keep_last` are deleted after the new one is published.

The reference model is never saved: it is frozen, and reloaded from its init path.
The optimizer state is saved per rank, as the torch optimizers inside megatron's
DistributedOptimizer hold it (Adam moments, step, main parameters), rather than through
megatron's optimizer checkpoint formats: on megatron-core 0.16 the default format is rejected
by dist_checkpointing and the "dp_reshardable" one reloaded into a run that then diverged
from the uninterrupted one. Left out, therefore: changing TP/PP/DP on resume (the model
weights reshard freely; the optimizer state needs the same layout).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from prime_megatron.checkpoint.megatron_io import check_checkpoint_dir, save_sharded
from prime_megatron.models.builder import unwrap_model

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"


def _rng_object(parallel):
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    return ShardedObject("rng_state", state, (parallel.world_size,), (parallel.rank,), replica_id=0)


def _inner_optimizers(optimizer) -> list:
    """The torch optimizers inside a megatron (chained) optimizer, in a fixed order."""
    return [inner.optimizer for inner in getattr(optimizer, "chained_optimizers", [optimizer])]


def _optimizer_object(name: str, optimizer, parallel):
    """This rank's optimizer shard as one object: the torch state dicts (Adam moments, step)
    and the main parameters they update (fp32 copies under bf16 training; views of the model
    weights in fp32, saved anyway so both cases load the same way)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state = [{"torch": inner.state_dict(),
              "main_params": [p.detach().clone() for g in inner.param_groups for p in g["params"]]}
             for inner in _inner_optimizers(optimizer)]
    return ShardedObject(f"{name}_optimizer", state, (parallel.world_size,), (parallel.rank,), replica_id=0)


def _load_optimizer_object(optimizer, state: list) -> None:
    inners = _inner_optimizers(optimizer)
    if len(inners) != len(state):
        raise ValueError(f"checkpoint has {len(state)} optimizer groups, this run {len(inners)}: "
                         "resume needs the same model and parallel layout")
    with torch.no_grad():
        for inner, saved in zip(inners, state):
            params = [p for g in inner.param_groups for p in g["params"]]
            for param, value in zip(params, saved["main_params"], strict=True):
                param.copy_(value)
            inner.load_state_dict(saved["torch"])


def _sharded_state(models: dict, optimizers: dict, parallel, *, is_loading: bool) -> dict:
    state = {"rng": _rng_object(parallel)}
    for name, model in models.items():
        # Prefixed keys ("policy.decoder...") keep the two models apart in one checkpoint and let
        # tools/convert_megatron_to_hf.py export either of them.
        model_sd = unwrap_model(model).sharded_state_dict(prefix=f"{name}.")
        state[name] = model_sd
        if name in optimizers:
            state[f"{name}_optimizer"] = _optimizer_object(name, optimizers[name], parallel)
    return state


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    pointer = Path(ckpt_dir) / LATEST_FILE
    if not pointer.is_file():
        return None
    path = Path(ckpt_dir) / pointer.read_text().strip()
    return check_checkpoint_dir(path)


def save_train_checkpoint(ckpt_dir: str | os.PathLike, step: int, *, models: dict, optimizers: dict,
                          trainer_state: dict, parallel, keep_last: int = 2) -> Path:
    """Collective. `models`/`optimizers` map a name ("policy", "prm") to megatron objects."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f"step_{step:08d}"

    def finalize(tmp: Path) -> None:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}))

    save_sharded(_sharded_state(models, optimizers, parallel, is_loading=False), path,
                 rank=parallel.rank, finalize=finalize)
    if parallel.rank == 0:
        tmp_pointer = ckpt_dir / (LATEST_FILE + ".tmp")
        tmp_pointer.write_text(path.name + "\n")
        os.replace(tmp_pointer, ckpt_dir / LATEST_FILE)
        _prune(ckpt_dir, keep_last)
    if dist.is_initialized():
        dist.barrier()
    return path


def _prune(ckpt_dir: Path, keep_last: int) -> None:
    finished = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and not p.name.endswith((".tmp", ".old")))
    for old in finished[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def load_train_checkpoint(path: str | os.PathLike, *, models: dict, optimizers: dict, parallel) -> dict:
    """Collective: restore models, optimizers and RNG in place; return the trainer state."""
    from megatron.core import dist_checkpointing

    path = check_checkpoint_dir(path)
    loaded = dist_checkpointing.load(_sharded_state(models, optimizers, parallel, is_loading=True), str(path))
    for name, model in models.items():
        result = unwrap_model(model).load_state_dict({k.removeprefix(f"{name}."): v for k, v in loaded[name].items()},
                                       strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"{path}: {name} could not load {missing} (unexpected: {result.unexpected_keys})")
        if name in optimizers:
            _load_optimizer_object(optimizers[name], loaded[f"{name}_optimizer"])
    rng = loaded["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return json.loads((path / STATE_FILE).read_text())
