"""build_model on 2 gloo ranks: parameter names and shard shapes per layout, roles.

Shapes are worked out from QWEN2_TINY (hidden 64, 4 heads of 16, 2 kv heads, ffn 128,
vocab 250 -> 256 padded) and the megatron layouts documented in INTERFACES.md.
"""
from __future__ import annotations

from tests.distributed import run_distributed
from tests.models.reference import QWEN2_TINY


def _worker(rank, world_size):
    import torch.distributed

    from prime_megatron.models.arch import load_arch
    from prime_megatron.models.builder import build_model, offload_to_cpu
    from prime_megatron.parallel import init_parallel

    out = {}
    parallel = init_parallel(tp=2)
    qwen = load_arch(QWEN2_TINY)
    out["tp2"] = {n: tuple(p.shape) for n, p in build_model(qwen, parallel=parallel).named_parameters()}
    llama = load_arch(dict(QWEN2_TINY, architectures=["LlamaForCausalLM"], tie_word_embeddings=True))
    out["llama_tied"] = sorted(n for n, _ in build_model(llama, parallel=parallel).named_parameters())
    reference = build_model(qwen, parallel=parallel, trainable=False)
    out["reference"] = (reference.training, any(p.requires_grad for p in reference.parameters()))
    offload_to_cpu(reference)
    try:
        offload_to_cpu(build_model(qwen, parallel=parallel))
    except ValueError as err:
        out["offload_error"] = str(err)
    parallel = init_parallel(tp=1, pp=2)
    out["pp2"] = sorted(n for n, _ in build_model(qwen, parallel=parallel).named_parameters())
    # Rank 0 hosts the rendezvous store: it must not exit while a peer still builds groups.
    torch.distributed.barrier()
    return out


def test_names_shapes_and_roles():
    results = run_distributed(_worker, world_size=2, timeout_s=240)
    layer = "decoder.layers.{}."
    expected_tp2 = {
        "embedding.word_embeddings.weight": (128, 64),  # 256 padded rows / tp
        "decoder.final_layernorm.weight": (64,),
        "output_layer.weight": (128, 64),
    }
    for i in range(2):
        expected_tp2.update({
            layer.format(i) + "input_layernorm.weight": (64,),
            # (4 query heads + 2 kv groups * (k, v)) * head_dim 16 / tp 2 = 64 rows
            layer.format(i) + "self_attention.linear_qkv.weight": (64, 64),
            layer.format(i) + "self_attention.linear_qkv.bias": (64,),
            layer.format(i) + "self_attention.linear_proj.weight": (64, 32),  # 4 * 16 / tp columns
            layer.format(i) + "pre_mlp_layernorm.weight": (64,),
            layer.format(i) + "mlp.linear_fc1.weight": (128, 64),  # (gate + up) 2 * 128 / tp
            layer.format(i) + "mlp.linear_fc2.weight": (64, 64),  # 128 / tp columns
        })
    for rank, out in enumerate(results):
        assert out["tp2"] == expected_tp2
        # Llama: no qkv bias; tied: the output layer is the embedding.
        assert not any("bias" in n or n == "output_layer.weight" for n in out["llama_tied"])
        assert out["reference"] == (False, False)
        assert "only frozen models" in out["offload_error"]
        stage = sorted(n for n in expected_tp2 if n.startswith("decoder.layers.0."))
        if rank == 0:
            assert out["pp2"] == sorted(stage + ["embedding.word_embeddings.weight"])
        else:  # layer numbering is local to the stage
            assert out["pp2"] == sorted(stage + ["decoder.final_layernorm.weight", "output_layer.weight"])
