"""Helpers for parity tests: tiny archs, deterministic full weights, and TP/PP slicing of them.

The unsharded (tp=1, pp=1) model is the reference. `randomize_(model, seed)` gives every
parameter (norm weights and qkv biases included, which megatron initialises to constants)
seeded random values; `load_full_state_(model, full, parallel)` copies this rank's slice of
those full tensors into a tp/pp-sharded model; `local_slice` is the same slicing, used to
compare a sharded gradient with the reference one.

Slicing follows megatron's layouts: column-parallel weights (qkv, fc1, word embeddings,
output layer) split dim 0, row-parallel ones (linear_proj, fc2) dim 1; fc1 of a gated MLP
is [gate; up] and each rank holds [gate_r; up_r]; qkv rows are grouped per query group,
so a contiguous dim-0 split hands each rank whole groups. Layers are numbered locally per
pipeline stage.
"""
from __future__ import annotations

import re

import torch

QWEN2_TINY = dict(
    architectures=["Qwen2ForCausalLM"], vocab_size=250, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=256,
)
# 250 real tokens -> 256 rows at tp=1 and tp=2 (multiple of 128 * tp), so 6 padding rows.


def randomize_(model, seed: int) -> dict[str, torch.Tensor]:
    """Overwrite every parameter of an unsharded model with seeded values; return copies."""
    gen = torch.Generator().manual_seed(seed)
    full = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            values = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if "layernorm" in name:
                values = 1.0 + 0.1 * values
            else:
                values = 0.05 * values if "bias" not in name else 0.1 * values
            param.copy_(values)
            full[name] = values.clone()
    return full


def _global_name(name: str, layer_offset: int) -> str:
    return re.sub(r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + layer_offset}.", name)


def local_slice(name: str, full: torch.Tensor, param, *, tp: int, tp_rank: int) -> torch.Tensor:
    """This tp rank's part of the full tensor behind parameter `name`."""
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    if name.endswith("mlp.linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)
    return full.chunk(tp, dim=param.partition_dim)[tp_rank]


def layer_offset(num_layers: int, parallel) -> int:
    return num_layers // parallel.pp * parallel.pp_rank


def iter_local_with_full(model, full: dict, parallel, num_layers: int):
    """(local name, param, full tensor) for every parameter of a sharded model."""
    offset = layer_offset(num_layers, parallel)
    for name, param in model.named_parameters():
        key = _global_name(name, offset)
        if key == "output_layer.weight" and key not in full:  # tied: the output layer is the embedding
            key = "embedding.word_embeddings.weight"
        yield name, param, full[key]


def load_full_state_(model, full: dict, parallel, num_layers: int) -> None:
    with torch.no_grad():
        for name, param, tensor in iter_local_with_full(model, full, parallel, num_layers):
            param.copy_(local_slice(name, tensor, param, tp=parallel.tp, tp_rank=parallel.tp_rank))
