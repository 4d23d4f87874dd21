"""Build a megatron-core GPTModel (policy, implicit PRM or reference) from a ModelArch.

The layer spec is Transformer Engine's when `transformer_engine` imports (GPU clusters, NGC
containers) and megatron's local spec with RMSNorm otherwise (CPU, CI). The model is this
rank's shard: tp splits attention heads, the MLP and the (padded) vocabulary; pp gives the
rank its contiguous slice of layers, the embedding on the first stage and the output layer
on the last.

`model.prime_vocab_size` records the unpadded vocabulary so log-probs can ignore the rows
added to make the vocabulary divisible by tp.

Roles: `trainable=True` (policy, PRM) keeps gradients on; `trainable=False` (reference)
returns the model frozen, in eval mode, without gradients. `offload_to_cpu` / `load_to_device`
move a frozen reference off the GPU between uses.

Left out: dropout (PRIME fine-tunes with dropout 0, as the HF checkpoints do), sequence
parallelism, MoE and rope scaling (arch.py refuses those configs).
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from prime_megatron.models.arch import ModelArch
from prime_megatron.parallel import ParallelState


def have_transformer_engine() -> bool:
    """True when Transformer Engine is importable *and* usable (it needs CUDA)."""
    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def build_transformer_config(arch: ModelArch, *, parallel: ParallelState, params_dtype=torch.float32):
    """TransformerConfig for `arch` under `parallel`; fused CUDA kernels off when CUDA is absent."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    arch.check_tp(parallel.tp)
    if arch.num_layers % parallel.pp != 0:
        raise ValueError(f"num_layers={arch.num_layers} is not divisible by pp={parallel.pp}")
    on_gpu = torch.cuda.is_available()
    config = TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.intermediate_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,  # SwiGLU: silu(gate) * up
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        # CPU: no fused kernels and no CUDA-side initialisation (PLATFORM.md).
        use_cpu_initialization=not on_gpu,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        apply_rope_fusion=False,
        persist_layer_norm=on_gpu,
        bias_dropout_fusion=on_gpu,
    )
    # Micro-batches are trimmed to their own longest row (update/forward_backward.py), so
    # pipeline stages must exchange activation shapes. Set after construction: __post_init__
    # rejects it together with the (unused, dense model) MoE allgather dispatcher default.
    config.variable_seq_lengths = True
    return config


def _layer_spec():
    from megatron.core.models.gpt import gpt_layer_specs

    if have_transformer_engine():
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")


def build_model(arch: ModelArch, *, parallel: ParallelState, trainable: bool = True,
                params_dtype: torch.dtype = torch.float32):
    """This rank's GPTModel shard for `arch`. trainable=False gives a frozen eval-mode reference."""
    from megatron.core.models.gpt import GPTModel

    config = build_transformer_config(arch, parallel=parallel, params_dtype=params_dtype)
    model = GPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(),
        vocab_size=arch.padded_vocab_size(parallel.tp),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel.is_first_stage,
        post_process=parallel.is_last_stage,
        parallel_output=True,  # logits stay vocab-sharded: models/logprobs.py works on shards
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=arch.rope_theta,
    )
    # The real vocabulary: log-prob code excludes the padding rows (update/forward_backward.py).
    model.prime_vocab_size = arch.vocab_size
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    if params_dtype != torch.float32:
        model.to(params_dtype)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model


def offload_to_cpu(model) -> None:
    """Move a frozen model's weights to host memory (reference model between uses)."""
    _check_frozen(model, "offload_to_cpu")
    model.to("cpu")


def load_to_device(model) -> None:
    """Bring an offloaded frozen model back to the accelerator (no-op on CPU)."""
    _check_frozen(model, "load_to_device")
    if torch.cuda.is_available():
        model.to(torch.cuda.current_device())


def _check_frozen(model, what: str) -> None:
    if any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{what}: only frozen models (build_model(trainable=False)) may be moved; "
                         "a trainable model's optimizer holds references to its parameters")


def unwrap_model(model):
    """The GPTModel inside megatron's DDP / Float16Module wrappers (both keep it in `.module`);
    checkpoint keys, the output layer and the real vocabulary size live on it."""
    while hasattr(model, "module"):
        model = model.module
    return model
