"""load_arch on Qwen2 / Llama configs, refusals, and vocab padding by hand."""
from __future__ import annotations

import json

import pytest

from prime_megatron.models.arch import load_arch

# Qwen2.5-0.5B-Instruct's config.json (the fields load_arch reads, values as published).
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06, "tie_word_embeddings": True, "max_position_embeddings": 32768,
    "hidden_act": "silu", "use_sliding_window": False,
}
LLAMA_TINY = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 256,
    "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 8,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
}


def test_qwen2_from_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_05B))
    arch = load_arch(tmp_path)
    assert arch.family == "qwen2" and arch.qkv_bias and arch.tie_word_embeddings
    assert (arch.num_attention_heads, arch.num_kv_heads, arch.head_dim) == (14, 2, 64)  # 896 / 14
    assert arch.rope_theta == 1e6 and arch.num_layers == 24
    assert load_arch(tmp_path / "config.json") == arch == load_arch(QWEN25_05B)


def test_llama_defaults():
    arch = load_arch(LLAMA_TINY)
    # No num_key_value_heads -> plain multi-head attention; no attention_bias -> no qkv bias.
    assert arch.family == "llama" and arch.num_kv_heads == 8 and not arch.qkv_bias
    assert arch.head_dim == 32 and not arch.tie_word_embeddings
    # HF Llama's attention_bias also adds an o_proj bias, which the megatron model lacks: refused.
    with pytest.raises(ValueError, match="attention_bias"):
        load_arch(dict(LLAMA_TINY, attention_bias=True))


def test_padded_vocab_size_by_hand():
    arch = load_arch(QWEN25_05B)
    # 151936 = 1187 * 128, a multiple of 128 * 1, so tp=1 keeps it; 151936 / 256 = 593.5, so
    # tp=2 rounds up to 594 * 256 = 152064.
    assert arch.padded_vocab_size(1) == 151936
    assert arch.padded_vocab_size(2) == 152064
    # tp=8: 151936 / 1024 = 148.375 -> 149 * 1024 = 152576.
    assert arch.padded_vocab_size(8) == 152576


def test_refusals_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unsupported architecture \\['MixtralForCausalLM'\\]"):
        load_arch(dict(LLAMA_TINY, architectures=["MixtralForCausalLM"]))
    with pytest.raises(ValueError, match="rope_scaling"):
        load_arch(dict(LLAMA_TINY, rope_scaling={"type": "llama3", "factor": 8.0}))
    with pytest.raises(ValueError, match="missing required key 'hidden_size'"):
        load_arch({k: v for k, v in LLAMA_TINY.items() if k != "hidden_size"})
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads=3"):
        load_arch(dict(LLAMA_TINY, num_key_value_heads=3))
    with pytest.raises(FileNotFoundError, match="no HF config"):
        load_arch(tmp_path)
    with pytest.raises(ValueError, match="num_attention_heads=14 is not divisible by tp=4"):
        load_arch(QWEN25_05B).check_tp(4)
    with pytest.raises(ValueError, match="num_kv_heads=2 is not divisible by tp=7"):
        load_arch(QWEN25_05B).check_tp(7)
