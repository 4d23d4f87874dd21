"""Names, shapes and tensor layouts between megatron-core GPT models and HF Qwen2/Llama.

Everything here is pure (tensors in, tensors out, no I/O, no torch.distributed). It is used by
the HF<->megatron converters (checkpoint/convert.py) and by weight sync, which streams full,
TP-gathered megatron tensors to a rollout engine under their HF names.

Megatron names are *global* (the layer index counts over all pipeline stages):
`decoder.layers.{i}.self_attention.linear_qkv.weight`. Both the local-spec spelling
(`input_layernorm.weight`, `pre_mlp_layernorm.weight`) and the Transformer Engine spelling
(norms fused into `linear_qkv.layer_norm_weight` / `linear_fc1.layer_norm_weight`) are accepted.

Layouts (megatron-core 0.16, `SelfAttention.get_query_key_value_tensors`, `MLP` with
gated_linear_unit):
- linear_qkv rows are grouped per kv head g: [q heads of g (heads_per_group*head_dim rows),
  k_g (head_dim), v_g (head_dim)]. Column-parallel TP takes a contiguous row block, which is
  a whole number of kv groups.
- linear_fc1 rows are [gate; up]. TP rank r holds [gate_r; up_r], not a contiguous block.
- linear_proj and linear_fc2 are row-parallel (split along the input dim, 1).
- embedding and output_layer are vocab-parallel with rows padded to
  `arch.padded_vocab_size(tp)`; the padding rows are zero on import and dropped on export.

Left out: biases outside q/k/v (arch.py refuses configs that have them), MoE, MLA.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# TE spec fuses the pre-attention / pre-MLP RMSNorm weight into the following linear; megatron's
# local spec maps its norms to these names in checkpoints too (sharded_state_dict_keys_map).
TE_FUSED_NORMS = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
_TE_ALIASES = {te: local for local, te in TE_FUSED_NORMS.items()}
# tp_kind per (layer-local) megatron suffix.
_LAYER_KINDS = {
    "input_layernorm.weight": "replicated",
    "self_attention.linear_qkv.weight": "column",
    "self_attention.linear_qkv.bias": "column",
    "self_attention.linear_proj.weight": "row",
    "pre_mlp_layernorm.weight": "replicated",
    "mlp.linear_fc1.weight": "gated_column",
    "mlp.linear_fc2.weight": "row",
}
_GLOBAL_KINDS = {
    "embedding.word_embeddings.weight": "vocab",
    "decoder.final_layernorm.weight": "replicated",
    "output_layer.weight": "vocab",
}


@dataclass(frozen=True)
class MegatronName:
    """A parsed megatron parameter name: `layer` is the global layer index or None."""

    layer: int | None
    suffix: str  # canonical local-spec suffix, or the full name for non-layer params

    @property
    def name(self) -> str:
        return self.suffix if self.layer is None else f"decoder.layers.{self.layer}.{self.suffix}"

    @property
    def tp_kind(self) -> str:
        """'column' | 'gated_column' | 'row' | 'vocab' | 'replicated'."""
        return (_GLOBAL_KINDS if self.layer is None else _LAYER_KINDS)[self.suffix]


def parse_megatron_name(name: str) -> MegatronName:
    """Parse a global megatron parameter name (local or TE spelling); unknown names raise."""
    if name in _GLOBAL_KINDS:
        return MegatronName(None, name)
    match = _LAYER_RE.match(name)
    if match:
        suffix = _TE_ALIASES.get(match.group(2), match.group(2))
        if suffix in _LAYER_KINDS:
            return MegatronName(int(match.group(1)), suffix)
    raise KeyError(f"unknown megatron parameter name {name!r}")


def to_global_name(local_name: str, layer_offset: int) -> str:
    """`decoder.layers.{i}...` of a pipeline stage -> the same name with i + layer_offset."""
    match = _LAYER_RE.match(local_name)
    if not match:
        return local_name
    return f"decoder.layers.{int(match.group(1)) + layer_offset}.{match.group(2)}"


def megatron_param_names(arch) -> list[str]:
    """All global megatron parameter names of the full model, in forward order (local spelling)."""
    names = ["embedding.word_embeddings.weight"]
    for layer in range(arch.num_layers):
        for suffix in _LAYER_KINDS:
            if suffix == "self_attention.linear_qkv.bias" and not arch.qkv_bias:
                continue
            names.append(f"decoder.layers.{layer}.{suffix}")
    names.append("decoder.final_layernorm.weight")
    if not arch.tie_word_embeddings:
        names.append("output_layer.weight")
    return names


def megatron_full_shape(name: str, arch, *, padded_vocab_size: int) -> tuple[int, ...]:
    """Shape of the full (TP-gathered) megatron tensor `name`."""
    parsed = parse_megatron_name(name)
    h = arch.hidden_size
    qkv_rows = (arch.num_attention_heads + 2 * arch.num_kv_heads) * arch.head_dim
    shapes = {
        "embedding.word_embeddings.weight": (padded_vocab_size, h),
        "output_layer.weight": (padded_vocab_size, h),
        "decoder.final_layernorm.weight": (h,),
        "input_layernorm.weight": (h,),
        "pre_mlp_layernorm.weight": (h,),
        "self_attention.linear_qkv.weight": (qkv_rows, h),
        "self_attention.linear_qkv.bias": (qkv_rows,),
        "self_attention.linear_proj.weight": (h, arch.num_attention_heads * arch.head_dim),
        "mlp.linear_fc1.weight": (2 * arch.intermediate_size, h),
        "mlp.linear_fc2.weight": (h, arch.intermediate_size),
    }
    return shapes[parsed.suffix]


def hf_names_for(name: str, arch) -> list[str]:
    """The HF tensor names that megatron tensor `name` is made of (empty: lm_head when tied)."""
    parsed = parse_megatron_name(name)
    if parsed.layer is None:
        if parsed.suffix == "output_layer.weight":
            return [] if arch.tie_word_embeddings else ["lm_head.weight"]
        return {"embedding.word_embeddings.weight": ["model.embed_tokens.weight"],
                "decoder.final_layernorm.weight": ["model.norm.weight"]}[parsed.suffix]
    p = f"model.layers.{parsed.layer}."
    return {
        "input_layernorm.weight": [p + "input_layernorm.weight"],
        "self_attention.linear_qkv.weight": [p + f"self_attn.{x}_proj.weight" for x in "qkv"],
        "self_attention.linear_qkv.bias": [p + f"self_attn.{x}_proj.bias" for x in "qkv"],
        "self_attention.linear_proj.weight": [p + "self_attn.o_proj.weight"],
        "pre_mlp_layernorm.weight": [p + "post_attention_layernorm.weight"],
        "mlp.linear_fc1.weight": [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
        "mlp.linear_fc2.weight": [p + "mlp.down_proj.weight"],
    }[parsed.suffix]


def hf_param_shapes(arch) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of the model with its shape, in megatron forward order."""
    h, d = arch.hidden_size, arch.head_dim
    q, kv, f = arch.num_attention_heads * d, arch.num_kv_heads * d, arch.intermediate_size
    per_name = {"q_proj": q, "k_proj": kv, "v_proj": kv}
    shapes: dict[str, tuple[int, ...]] = {}
    for name in megatron_param_names(arch):
        for hf_name in hf_names_for(name, arch):
            kind = hf_name.rsplit(".", 2)[-2]
            if hf_name.endswith("norm.weight"):
                shapes[hf_name] = (h,)
            elif kind in per_name:
                shapes[hf_name] = (per_name[kind],) if hf_name.endswith("bias") else (per_name[kind], h)
            elif kind in ("gate_proj", "up_proj"):
                shapes[hf_name] = (f, h)
            elif kind == "down_proj":
                shapes[hf_name] = (h, f)
            elif kind == "o_proj":
                shapes[hf_name] = (h, q)
            else:  # embed_tokens, lm_head
                shapes[hf_name] = (arch.vocab_size, h)
    return shapes


def compute_qkv_join(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_kv_heads: int,
                     head_dim: int) -> torch.Tensor:
    """HF q/k/v projections (weights [rows, h] or biases [rows]) -> megatron's fused linear_qkv.

    Output rows, per kv group g: q rows of the heads in g, then k_g, then v_g.
    """
    tail = q.shape[1:]
    groups = [t.reshape(num_kv_heads, -1, *tail) for t in (q, k, v)]
    if groups[1].shape[1] != head_dim or groups[2].shape[1] != head_dim:
        raise ValueError(f"k/v rows {tuple(k.shape)}/{tuple(v.shape)} are not num_kv_heads={num_kv_heads} "
                         f"x head_dim={head_dim}")
    return torch.cat(groups, dim=1).reshape(-1, *tail)


def compute_qkv_split(qkv: torch.Tensor, *, num_heads: int, num_kv_heads: int,
                      head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `compute_qkv_join`: megatron linear_qkv -> contiguous HF (q, k, v)."""
    tail = qkv.shape[1:]
    per_group = num_heads // num_kv_heads * head_dim
    grouped = qkv.reshape(num_kv_heads, per_group + 2 * head_dim, *tail)
    q, k, v = torch.split(grouped, [per_group, head_dim, head_dim], dim=1)
    return tuple(t.reshape(-1, *tail).contiguous() for t in (q, k, v))


def _pad_rows(t: torch.Tensor, rows: int, where: str) -> torch.Tensor:
    if t.shape[0] > rows:
        raise ValueError(f"{where}: {t.shape[0]} rows exceed the padded vocabulary of {rows}")
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def hf_to_megatron(name: str, hf_tensors: Mapping[str, torch.Tensor], arch, *,
                   padded_vocab_size: int) -> torch.Tensor:
    """Full megatron tensor `name` from its HF tensors (`hf_names_for(name)` keys of hf_tensors).

    With tied embeddings `output_layer.weight` is taken from `model.embed_tokens.weight`.
    """
    parsed = parse_megatron_name(name)
    if parsed.suffix == "output_layer.weight" and arch.tie_word_embeddings:
        sources = [hf_tensors["model.embed_tokens.weight"]]
    else:
        sources = [hf_tensors[n] for n in hf_names_for(name, arch)]
    if parsed.suffix.startswith("self_attention.linear_qkv."):
        return compute_qkv_join(*sources, num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim)
    if parsed.suffix == "mlp.linear_fc1.weight":
        return torch.cat(sources, dim=0)
    if parsed.tp_kind == "vocab":
        return _pad_rows(sources[0], padded_vocab_size, name)
    return sources[0]


def megatron_to_hf(name: str, full: torch.Tensor, arch) -> list[tuple[str, torch.Tensor]]:
    """Full (TP-gathered) megatron tensor with a global name -> [(hf_name, tensor)].

    Padding vocab rows are dropped; `output_layer.weight` of a tied model maps to nothing.
    """
    parsed = parse_megatron_name(name)
    hf_names = hf_names_for(name, arch)
    if parsed.suffix.startswith("self_attention.linear_qkv."):
        parts = compute_qkv_split(full, num_heads=arch.num_attention_heads,
                                  num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim)
    elif parsed.suffix == "mlp.linear_fc1.weight":
        parts = torch.chunk(full, 2, dim=0)
    elif parsed.tp_kind == "vocab":
        parts = [full[: arch.vocab_size]]
    else:
        parts = [full]
    return list(zip(hf_names, parts))


def tp_split_dim(name: str) -> int | None:
    """The dim a TP rank's shard of `name` is cut along (None: replicated on every rank)."""
    kind = parse_megatron_name(name).tp_kind
    return {"column": 0, "gated_column": 0, "vocab": 0, "row": 1}.get(kind)


def compute_tp_shard(name: str, full: torch.Tensor, *, tp: int, tp_rank: int) -> torch.Tensor:
    """The slice of full tensor `name` that TP rank `tp_rank` of `tp` holds."""
    dim = tp_split_dim(name)
    if dim is None:
        return full
    if full.shape[dim] % tp != 0:
        raise ValueError(f"{name}: dim {dim} of size {full.shape[dim]} does not split over tp={tp}")
    if parse_megatron_name(name).tp_kind == "gated_column":
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([gate.chunk(tp)[tp_rank], up.chunk(tp)[tp_rank]])
    return full.chunk(tp, dim=dim)[tp_rank]


def compute_tp_gather(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `compute_tp_shard`: the shards of all TP ranks, in rank order -> full tensor."""
    dim = tp_split_dim(name)
    if dim is None:
        return shards[0]
    if parse_megatron_name(name).tp_kind == "gated_column":
        halves = [torch.chunk(s, 2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(shards, dim=dim)
