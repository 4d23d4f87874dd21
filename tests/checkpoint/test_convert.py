"""HF <-> megatron conversion on tiny random Qwen2 and Llama models (CPU, gloo).

One module fixture builds both models with `transformers`, converts each to megatron at
TP=2,PP=2 and at TP=1,PP=1 and back; one 2-process launch loads the checkpoints into real
megatron models (TP=2, then TP=1 x PP=2) and computes logits and log-probs.
"""
import importlib.util
import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from prime_megatron.checkpoint.convert import convert_hf_to_megatron, convert_megatron_to_hf
from prime_megatron.checkpoint.hf_io import SafetensorsReader
from tests.distributed import run_distributed

REPO = Path(__file__).resolve().parents[2]
# Vocab sizes not divisible by tp, and padded differently at TP=1 (1152 / 1024 rows) and TP=2
# (1280 / 1024), so loading a TP=1 checkpoint at TP=2 exercises the vocab-padding change.
CONFIGS = {
    "qwen2": dict(vocab_size=1100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1e6),
    # head_dim 32 != hidden/heads = 16, tied embeddings, no qkv bias.
    "llama": dict(vocab_size=997, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, tie_word_embeddings=True, rope_theta=5e5),
}
TOKENS = torch.tensor([[1, 5, 990, 17, 42, 300, 7, 996], [3, 3, 600, 8, 0, 12, 995, 64]])


def _make_hf_model(family: str, seed: int):
    import transformers

    cls = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM}[family]
    torch.manual_seed(seed)
    model = cls(cls.config_class(**CONFIGS[family])).eval()
    with torch.no_grad():  # HF initialises norms to 1 and biases to 0: make them tell layers apart
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def _tool(name: str):
    """A tools/ script as a module (in-process: a subprocess would pay the imports again)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_all(hf_dir) -> dict:
    reader = SafetensorsReader(hf_dir)
    return {name: reader.get(name) for name in reader.names()}


def _assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    cases = {}
    for seed, family in enumerate(CONFIGS):
        d = root / family
        model = _make_hf_model(family, seed)
        # qwen2: sharded safetensors + index; llama: a single model.safetensors.
        model.save_pretrained(d / "hf", max_shard_size="200KB" if family == "qwen2" else "1GB")
        (d / "hf" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
        convert_hf_to_megatron(d / "hf", d / "meg_tp2pp2", tp=2, pp=2, progress=False)
        if family == "llama":  # once through the command line, which is a thin wrapper
            _tool("convert_hf_to_megatron").main(["--hf-dir", str(d / "hf"), "--out", str(d / "meg_tp1pp1"),
                                                  "--no-progress"])
        else:
            convert_hf_to_megatron(d / "hf", d / "meg_tp1pp1", progress=False)
        for layout in ("tp2pp2", "tp1pp1"):
            convert_megatron_to_hf(d / f"meg_{layout}", d / f"hf_from_{layout}", max_shard_bytes=100_000,
                                   progress=False)
        cases[family] = dict(model=model, dir=d)
    return cases


@pytest.mark.parametrize("family", list(CONFIGS))
def test_round_trip_is_bitwise_at_both_layouts(tiny, family):
    d = tiny[family]["dir"]
    original = _read_all(d / "hf")
    for layout in ("tp2pp2", "tp1pp1"):
        _assert_same_tensors(original, _read_all(d / f"hf_from_{layout}"))
    assert len(list((d / "hf_from_tp2pp2").glob("*.safetensors"))) > 1  # sharded, with an index
    assert (d / "hf_from_tp2pp2" / "tokenizer_config.json").read_text() == \
        (d / "hf" / "tokenizer_config.json").read_text()
    assert not list(d.glob(".*")), "no temporary directories may be left behind"


@pytest.mark.parametrize("family", list(CONFIGS))
def test_exported_model_loads_and_generates(tiny, family):
    from transformers import AutoModelForCausalLM

    original = tiny[family]["model"]
    exported = AutoModelForCausalLM.from_pretrained(tiny[family]["dir"] / "hf_from_tp2pp2").eval()
    with torch.no_grad():
        # Same weights, same code: identical logits and greedy continuations.
        assert torch.equal(exported(TOKENS).logits, original(TOKENS).logits)
        out = exported.generate(TOKENS[:, :4], max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert out.shape == (2, 10)
        assert torch.equal(out, original.generate(TOKENS[:, :4], max_new_tokens=6, do_sample=False, pad_token_id=0))


def test_bf16_export_equals_casting_the_original(tiny, tmp_path):
    d = tiny["qwen2"]["dir"]
    convert_megatron_to_hf(d / "meg_tp2pp2", tmp_path / "bf16", dtype=torch.bfloat16, progress=False)
    want = {k: v.to(torch.bfloat16) for k, v in _read_all(d / "hf").items()}
    _assert_same_tensors(want, _read_all(tmp_path / "bf16"))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


# ------------------------------------------------------------------ megatron models on 2 ranks

def _megatron_worker(rank, world_size, cases):
    import torch.distributed as dist

    from prime_megatron.checkpoint import hf_mapping as hm
    from prime_megatron.checkpoint.megatron_io import load_model_checkpoint, save_model_checkpoint
    from prime_megatron.models.arch import load_arch
    from prime_megatron.models.builder import build_model
    from prime_megatron.models.logprobs import compute_token_logprobs
    from prime_megatron.parallel import init_parallel

    # megatron's checkpoint writer forks worker processes, which a daemonic process may not do;
    # tests/distributed.py starts ranks as daemons (so they die with pytest).
    multiprocessing.current_process().daemon = False
    results = {}
    parallel = init_parallel(tp=2, pp=1)
    for family, case in cases.items():
        arch = load_arch(case["hf"])
        model = build_model(arch, parallel=parallel, trainable=False)
        load_model_checkpoint(model, case["meg_tp2pp2"], parallel=parallel)  # PP=2 -> PP=1
        with torch.no_grad():
            positions = torch.arange(TOKENS.shape[1]).expand_as(TOKENS)
            shard = model(TOKENS, positions, attention_mask=None)  # [B, S, V_padded / tp]
            parts = [torch.empty_like(shard) for _ in range(parallel.tp)]
            dist.all_gather(parts, shard.contiguous(), group=parallel.tp_group)
            logprobs = compute_token_logprobs(shard[:, :-1], TOKENS[:, 1:], tp_group=parallel.tp_group,
                                              vocab_size=arch.vocab_size)
        save_model_checkpoint(model, case["saved"], parallel=parallel, prefix="policy.")
        # The TP=1 conversion has a smaller padded vocabulary: it must load to the same weights.
        other = build_model(arch, parallel=parallel, trainable=False)
        load_model_checkpoint(other, case["meg_tp1pp1"], parallel=parallel)
        same = all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
        results[family] = dict(logits=torch.cat(parts, dim=-1)[..., : arch.vocab_size], logprobs=logprobs,
                               same_from_tp1=same)
    parallel = init_parallel(tp=1, pp=2)  # each rank now holds one of the two layers
    for family, case in cases.items():
        arch = load_arch(case["hf"])
        model = build_model(arch, parallel=parallel, trainable=False)
        load_model_checkpoint(model, case["meg_tp2pp2"], parallel=parallel)  # TP=2 -> TP=1
        hf = SafetensorsReader(case["hf"])
        offset = parallel.pp_rank * arch.num_layers // parallel.pp
        mismatched = []
        for name, param in model.named_parameters():
            global_name = hm.to_global_name(name, offset)
            want = hm.hf_to_megatron(global_name, {n: hf.get(n) for n in hm.hf_names_for(global_name, arch)
                                                   or ["model.embed_tokens.weight"]},
                                     arch, padded_vocab_size=arch.padded_vocab_size(1))
            if not torch.equal(param, want):
                mismatched.append(global_name)
        results[family]["pp_mismatched"] = mismatched
        results[family]["pp_names"] = sorted(hm.to_global_name(n, offset) for n, _ in model.named_parameters())
    return results


@pytest.fixture(scope="module")
def megatron_results(tiny):
    cases = {f: {k: str(c["dir"] / k) for k in ("hf", "meg_tp2pp2", "meg_tp1pp1")} | {"saved": str(c["dir"] / "saved")}
             for f, c in tiny.items()}
    return run_distributed(_megatron_worker, 2, args=(cases,), timeout_s=240)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_megatron_logits_match_transformers(tiny, megatron_results, family):
    with torch.no_grad():
        ref_logits = tiny[family]["model"](TOKENS).logits
    ref_logprobs = torch.log_softmax(ref_logits[:, :-1], -1).gather(-1, TOKENS[:, 1:, None])[..., 0]
    for rank_result in megatron_results:
        got = rank_result[family]
        # Same fp32 weights, different kernels (fused QKV GEMM, megatron's unfused softmax vs HF
        # SDPA, RMSNorm op order, TP-split GEMMs summed by all-reduce) only reorder fp32 sums:
        # measured max |diff| 2.7e-7 on logits of size ~1, i.e. a few ulps (fp32 ulp at 1 is
        # 1.2e-7). 2e-6 leaves ~8x margin; a layout bug (swapped heads, gate/up) gives O(0.1).
        torch.testing.assert_close(got["logits"], ref_logits, rtol=0, atol=2e-6)
        # Log-probs are ~ -ln(1100) = -7 where the fp32 ulp is 4.8e-7; the log-sum-exp over the
        # vocabulary adds a few of those on top of the logit differences.
        torch.testing.assert_close(got["logprobs"], ref_logprobs, rtol=0, atol=4e-6)
        assert got["same_from_tp1"]


@pytest.mark.parametrize("family", list(CONFIGS))
def test_pipeline_stages_load_their_layers_exactly(megatron_results, family):
    stage0, stage1 = (r[family] for r in megatron_results)
    assert stage0["pp_mismatched"] == [] and stage1["pp_mismatched"] == []
    assert any(".0." in n for n in stage0["pp_names"]) and not any(".1." in n for n in stage0["pp_names"])
    assert "decoder.final_layernorm.weight" in stage1["pp_names"]


@pytest.mark.parametrize("family", list(CONFIGS))
def test_training_checkpoint_exports_to_the_original_weights(tiny, megatron_results, family, tmp_path):
    d = tiny[family]["dir"]
    convert_megatron_to_hf(d / "saved", tmp_path / "hf", hf_config_dir=d / "hf", key_prefix="policy.", progress=False)
    _assert_same_tensors(_read_all(d / "hf"), _read_all(tmp_path / "hf"))
