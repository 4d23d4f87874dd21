"""Pure layout tests for checkpoint/hf_mapping.py, against rows labelled by hand."""
import pytest
import torch

from prime_megatron.checkpoint import hf_mapping as hm
from prime_megatron.models.arch import ModelArch


def _arch(**kw) -> ModelArch:
    base = dict(family="qwen2", vocab_size=10, hidden_size=8, intermediate_size=6, num_layers=2,
                num_attention_heads=4, num_kv_heads=2, head_dim=2, rope_theta=1e6, rms_norm_eps=1e-6,
                qkv_bias=True, tie_word_embeddings=False, max_position_embeddings=64)
    return ModelArch(**{**base, **kw})


def _labelled(rows, cols=None):
    """Row i holds the value labels[i] (so layouts can be read off the first column)."""
    t = torch.tensor(rows, dtype=torch.float32)
    return t if cols is None else t[:, None].expand(-1, cols).clone()


def test_qkv_join_follows_megatron_group_interleave():
    # 4 query heads, 2 kv heads (2 queries per group), head_dim 1.
    q, k, v = _labelled([0, 1, 2, 3], 3), _labelled([10, 11], 3), _labelled([20, 21], 3)
    fused = hm.compute_qkv_join(q, k, v, num_kv_heads=2, head_dim=1)
    # group 0: q0 q1 k0 v0 | group 1: q2 q3 k1 v1
    assert fused[:, 0].tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    back = hm.compute_qkv_split(fused, num_heads=4, num_kv_heads=2, head_dim=1)
    for got, want in zip(back, (q, k, v)):
        assert torch.equal(got, want)


def test_qkv_join_bias_with_head_dim_two():
    q, k, v = _labelled([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]), _labelled([10, 10.5, 11, 11.5]), _labelled([20, 20.5, 21, 21.5])
    fused = hm.compute_qkv_join(q, k, v, num_kv_heads=2, head_dim=2)
    assert fused.tolist() == [0, 0.5, 1, 1.5, 10, 10.5, 20, 20.5, 2, 2.5, 3, 3.5, 11, 11.5, 21, 21.5]


def test_fc1_tp_shard_holds_gate_and_up_slices():
    name = "decoder.layers.0.mlp.linear_fc1.weight"
    full = _labelled([0, 1, 2, 3, 10, 11, 12, 13], 2)  # gate rows 0..3, up rows 10..13
    shards = [hm.compute_tp_shard(name, full, tp=2, tp_rank=r) for r in range(2)]
    assert shards[0][:, 0].tolist() == [0, 1, 10, 11]
    assert shards[1][:, 0].tolist() == [2, 3, 12, 13]
    assert torch.equal(hm.compute_tp_gather(name, shards), full)


def test_qkv_tp_shard_is_whole_groups_and_row_parallel_splits_columns():
    qkv = "decoder.layers.1.self_attention.linear_qkv.weight"
    fused = torch.tensor([0, 1, 10, 20, 2, 3, 11, 21.0])[:, None]
    assert hm.compute_tp_shard(qkv, fused, tp=2, tp_rank=1)[:, 0].tolist() == [2, 3, 11, 21]
    proj = "decoder.layers.1.self_attention.linear_proj.weight"
    full = torch.arange(12.0).view(3, 4)
    assert hm.compute_tp_shard(proj, full, tp=2, tp_rank=1).tolist() == [[2, 3], [6, 7], [10, 11]]
    assert torch.equal(hm.compute_tp_gather(proj, [full[:, :2], full[:, 2:]]), full)
    norm = "decoder.layers.1.input_layernorm.weight"
    assert hm.tp_split_dim(norm) is None


def test_vocab_padding_added_on_import_and_dropped_on_export():
    arch = _arch(vocab_size=3, hidden_size=2)
    emb = torch.arange(6.0).view(3, 2)
    full = hm.hf_to_megatron("embedding.word_embeddings.weight", {"model.embed_tokens.weight": emb}, arch,
                             padded_vocab_size=4)
    assert full.tolist() == [[0, 1], [2, 3], [4, 5], [0, 0]]
    assert [(n, t.tolist()) for n, t in hm.megatron_to_hf("output_layer.weight", full, arch)] == \
        [("lm_head.weight", emb.tolist())]
    tied = _arch(vocab_size=3, hidden_size=2, tie_word_embeddings=True)
    assert hm.megatron_to_hf("output_layer.weight", full, tied) == []


def test_te_names_alias_local_names_and_unknown_names_raise():
    te = hm.parse_megatron_name("decoder.layers.3.mlp.linear_fc1.layer_norm_weight")
    assert te == hm.parse_megatron_name("decoder.layers.3.pre_mlp_layernorm.weight")
    assert hm.hf_names_for(te.name, _arch()) == ["model.layers.3.post_attention_layernorm.weight"]
    assert hm.to_global_name("decoder.layers.1.mlp.linear_fc2.weight", 4) == "decoder.layers.5.mlp.linear_fc2.weight"
    with pytest.raises(KeyError, match="decoder.layers.0.mlp.router.weight"):
        hm.parse_megatron_name("decoder.layers.0.mlp.router.weight")


@pytest.mark.parametrize("family,tied", [("qwen2", False), ("llama", True)])
def test_round_trip_and_shapes_match_transformers(family, tied):
    """hf_param_shapes equals a real transformers model; hf->megatron->TP shards->hf is the identity."""
    import transformers

    cls = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM}[family]
    cfg = cls.config_class(vocab_size=10, hidden_size=8, intermediate_size=6, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=4, tie_word_embeddings=tied)
    model = cls(cfg)
    arch = _arch(family=family, head_dim=4, qkv_bias=family == "qwen2", tie_word_embeddings=tied)
    hf = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert {k: tuple(v.shape) for k, v in hf.items()} == hm.hf_param_shapes(arch)
    rebuilt = {}
    for name in hm.megatron_param_names(arch):
        full = hm.hf_to_megatron(name, hf, arch, padded_vocab_size=16)
        assert tuple(full.shape) == hm.megatron_full_shape(name, arch, padded_vocab_size=16)
        shards = [hm.compute_tp_shard(name, full, tp=2, tp_rank=r) for r in range(2)]
        rebuilt.update(hm.megatron_to_hf(name, hm.compute_tp_gather(name, shards), arch))
    assert rebuilt.keys() == hf.keys()
    assert all(torch.equal(rebuilt[k], hf[k]) for k in hf)
