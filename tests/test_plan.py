"""The memory planner: hand-worked numbers, and the shipped 7B/70B launch layouts fit by it."""
from pathlib import Path

import pytest

from prime_megatron.config import load_config
from prime_megatron.models.arch import load_arch
from prime_megatron.plan import (GIB, ClusterSpec, Layout, Workload, compute_activation_bytes,
                                 compute_kv_bytes_per_token, compute_memory_plan,
                                 compute_stage_params, format_plan, propose_layouts,
                                 read_sbatch_resources, resolve_model)

ROOT = Path(__file__).resolve().parents[1]

# A small Llama: h=1024, f=4096, 4 layers, 8 heads of 128 (no GQA), vocab 32000, untied.
SMALL = load_arch(dict(architectures=["LlamaForCausalLM"], vocab_size=32000, hidden_size=1024,
                       intermediate_size=4096, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=8))


def test_stage_params_by_hand():
    # layer: qkv 1024*3072 = 3,145,728; proj 1024*1024 = 1,048,576; mlp 3*1024*4096 = 12,582,912;
    # two norms 2,048 -> 16,779,264.  Embedding = output = 32000*1024 = 32,768,000; final norm 1,024.
    assert compute_stage_params(SMALL, tp=1, pp=1) == 4 * 16_779_264 + 2 * 32_768_000 + 1_024
    # tp=2, pp=2: the last stage holds 2 layers and the output layer, each split over 2 ranks.
    assert compute_stage_params(SMALL, tp=2, pp=2) == 2 * 16_779_264 // 2 + 32_768_000 // 2 + 1_024


def test_training_state_bytes_by_hand():
    # 132,654,080 params; bf16 weights 2 B + bf16 grads 2 B + (fp32 master 4 + Adam m 4 + v 4
    # + fp32 main-grad shard 4)/dp=4 -> 8 B/param (megatron's "4 + 16/d" row).
    cluster = ClusterSpec(gpu_mem_gib=80, gpus_per_node=4, nodes=1)
    work = Workload(micro_batch_size=2, seq_len=512, colocate=False)
    plan = compute_memory_plan(SMALL, cluster, work, Layout(tp=1, pp=1, dp=4))
    items = {item.name: item.nbytes for item in plan.resident}
    assert items["policy weights+grads+optimizer"] == 132_654_080 * 8 == 1_061_232_640
    assert items["prm weights+grads+optimizer"] == 1_061_232_640
    assert items["reference weights"] == 132_654_080 * 2
    # With an fp32 gradient buffer: 2 + 4 + 12/4 = 9 B/param ("6 + 12/d").
    fp32 = compute_memory_plan(SMALL, cluster, Workload(2, 512, grad_reduce_in_fp32=True, colocate=False),
                               Layout(1, 1, 4))
    assert fp32.resident[0].nbytes == 132_654_080 * 9


def test_activation_bytes_by_hand():
    # Per token per layer, elements: norms 4h = 4096, q,k,v 3072, attention out 1024,
    # fc1 out 2f = 8192, swiglu out f = 4096 -> 20,480 elements x 2 B = 40,960 B.
    # mbs 2 x 512 tokens x 4 layers x 40,960 B = 167,772,160 B = 160 MiB.
    work = Workload(micro_batch_size=2, seq_len=512)
    assert compute_activation_bytes(SMALL, work, tp=1)[0] == 167_772_160
    # tp=2 with sequence parallelism halves everything; without it the 4h norm tensors stay whole:
    # (4096 + 16384/2) x 2 B = 24,576 B per token per layer.
    assert compute_activation_bytes(SMALL, work, tp=2)[0] == 167_772_160 / 2
    no_sp = Workload(micro_batch_size=2, seq_len=512, sequence_parallel=False)
    assert compute_activation_bytes(SMALL, no_sp, tp=2)[0] == 1024 * 4 * 24_576
    # Full recompute: 4 layer inputs of 2h = 2,048 B each plus one whole layer per token.
    full = Workload(micro_batch_size=2, seq_len=512, recompute="full")
    assert compute_activation_bytes(SMALL, full, tp=1)[0] == 1024 * (4 * 2048 + 40_960)


def test_presets_match_published_sizes():
    # Qwen2.5-7B model card: 7.61B parameters; Llama-3-70B: 70.6B (HF hub count). Tolerance:
    # the published figures are rounded to 0.01B / 0.1B.
    assert compute_stage_params(resolve_model("qwen2.5-math-7b"), tp=1, pp=1) == pytest.approx(7.61e9, abs=0.01e9)
    assert compute_stage_params(resolve_model("llama3-70b"), tp=1, pp=1) == pytest.approx(70.6e9, abs=0.1e9)
    # KV cache, Qwen2.5-7B: K and V x 28 layers x 4 kv heads x 128 dims x 2 B = 57,344 B per token.
    assert compute_kv_bytes_per_token(resolve_model("qwen2.5-math-7b"), sglang_tp=1) == 57_344


def test_bad_layouts_are_reported():
    cluster = ClusterSpec(gpu_mem_gib=80, gpus_per_node=8, nodes=1)
    work = Workload(micro_batch_size=1, seq_len=4096)
    plan = compute_memory_plan(resolve_model("qwen2.5-math-7b"), cluster, work, Layout(tp=8, pp=1, dp=1))
    assert not plan.fits and any("num_attention_heads=28 is not divisible by tp=8" in p for p in plan.problems)
    plan = compute_memory_plan(resolve_model("qwen2.5-math-7b"), cluster, work, Layout(tp=2, pp=3, dp=1))
    assert any("pp=3 does not divide num_layers=28" in p for p in plan.problems)
    assert any("!= 8 GPUs" in p for p in plan.problems)


def test_proposal_is_the_smallest_fitting_model_parallel_group():
    arch = resolve_model("llama3-70b")
    work = Workload(micro_batch_size=1, seq_len=4096, sglang_tp=8)
    assert not any(p.fits for p in propose_layouts(arch, ClusterSpec(80, 8, 1), work))
    plans = propose_layouts(arch, ClusterSpec(80, 8, 16), work)
    best = plans[0]
    assert best.fits and best.peak <= 80 * GIB
    smaller = [p for p in plans if p.layout.tp * p.layout.pp < best.layout.tp * best.layout.pp]
    assert smaller and not any(p.fits for p in smaller)


@pytest.mark.parametrize("script, config, model", [
    ("slurm/prime_7b.sh", "examples/prime_qwen25_math_7b.yaml", "qwen2.5-math-7b"),
    ("slurm/prime_70b.sh", "examples/prime_70b.yaml", "llama3-70b"),
])
def test_shipped_launch_layouts_fit(script, config, model):
    nodes, gpus = read_sbatch_resources(ROOT / script)
    cfg = load_config(ROOT / config)
    cluster = ClusterSpec(gpu_mem_gib=80, gpus_per_node=gpus, nodes=nodes)  # A100/H100-80GB
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    assert cluster.world_size % (tp * pp) == 0, f"{script} x {config}: tp*pp={tp * pp} vs {cluster.world_size} GPUs"
    plan = compute_memory_plan(resolve_model(model), cluster, Workload.from_config(cfg),
                               Layout(tp, pp, cluster.world_size // (tp * pp)))
    assert plan.fits, f"{script} with {config} does not fit:\n{format_plan(plan)}"


def test_read_sbatch_resources_names_the_missing_line(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --nodes=2\n")
    with pytest.raises(ValueError, match="--gpus-per-node"):
        read_sbatch_resources(script)
