"""Per-GPU memory of a PRIME run, and the tp/pp/dp layouts that fit a cluster.

PRIME keeps three models of the same size on the training GPUs: the policy and the
implicit PRM (both trained: weights, gradients, optimizer state) and the frozen reference
(weights only, or none when `model.ref_on_cpu`). In colocated mode SGLang shares the same
GPUs: while it generates it holds `rollout.sglang_mem_fraction` of the GPU (its weights plus
the KV-cache pool, SGLang's `mem_fraction_static`), and it releases that memory (sleep)
while megatron trains. A run therefore has two peaks, and both must fit:

    rollout peak = resident training state + SGLang share + reserve
    train peak   = resident training state + activations + logits + reserve

Byte counts per parameter follow megatron-core's distributed-optimizer table
(docs "Distributed Optimizer"): bf16 weights (2 B), gradient buffer (2 B bf16, or 4 B with
`grad_reduce_in_fp32`), and an fp32 master copy plus two Adam moments (12 B) -- plus an fp32
main-gradient shard (4 B) when the buffer is bf16 -- sharded over dp.
Activations are counted tensor by tensor for a SwiGLU/GQA layer with flash attention
(no s x s score matrix), divided by tp under sequence parallelism. Under 1F1B the first
stage holds pp micro-batches of its L/pp layers, i.e. L layers' worth in total.

Left out: interleaved pipeline schedules, context parallelism, CPU offload of the training
state during rollouts (reported as not fitting rather than assumed), SGLang's CUDA graphs,
and allocator fragmentation beyond the fixed `reserve_gib`.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from prime_megatron.models.arch import ModelArch, load_arch

GIB = 1 << 30

# HF config.json fields of the models the paper and its scale-up use (values from the
# public config.json files of those checkpoints).
PRESETS: dict[str, dict] = {
    "qwen2.5-math-7b": dict(architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=3584,
                            intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                            num_key_value_heads=4, rope_theta=10000.0, max_position_embeddings=4096),
    "qwen2.5-32b": dict(architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=5120,
                        intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                        num_key_value_heads=8, rope_theta=1000000.0, max_position_embeddings=32768),
    "llama3-70b": dict(architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=8192,
                       intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192),
}


def resolve_model(name_or_path: str) -> ModelArch:
    """A preset name (see PRESETS) or an HF model dir / config.json path."""
    if name_or_path in PRESETS:
        return load_arch(PRESETS[name_or_path])
    try:
        return load_arch(name_or_path)
    except FileNotFoundError as err:
        raise ValueError(f"model {name_or_path!r}: neither a preset {sorted(PRESETS)} "
                         f"nor a readable HF config ({err})") from None


@dataclass(frozen=True)
class ClusterSpec:
    gpu_mem_gib: float
    gpus_per_node: int
    nodes: int

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class Workload:
    """What a step holds in memory; `from_config` reads it from the experiment YAML."""
    micro_batch_size: int
    seq_len: int  # prompt + response tokens of one padded sequence
    bf16: bool = True
    grad_reduce_in_fp32: bool = False  # megatron DistributedDataParallelConfig default
    train_prm: bool = True
    ref_on_gpu: bool = True
    colocate: bool = True
    sglang_mem_fraction: float = 0.5
    sglang_tp: int = 1
    sequence_parallel: bool = True
    recompute: str = "none"  # "none" | "full"
    reserve_gib: float = 4.0  # CUDA contexts (megatron + SGLang), NCCL buffers, fragmentation

    @classmethod
    def from_config(cls, cfg, **changes) -> "Workload":
        base = cls(
            micro_batch_size=cfg.update.micro_batch_size,
            seq_len=cfg.rollout.max_prompt_len + cfg.rollout.max_response_len,
            bf16=cfg.model.bf16, train_prm=cfg.uses_prm, ref_on_gpu=not cfg.model.ref_on_cpu,
            colocate=cfg.rollout.colocate, sglang_mem_fraction=cfg.rollout.sglang_mem_fraction,
            sglang_tp=cfg.rollout.sglang_tp)
        return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int


@dataclass(frozen=True)
class MemoryItem:
    name: str
    nbytes: float
    arithmetic: str


@dataclass
class MemoryPlan:
    layout: Layout
    resident: list[MemoryItem]  # on the GPU for the whole step
    train: list[MemoryItem]  # added while megatron trains
    rollout: list[MemoryItem]  # added while SGLang generates (colocated)
    gpu_mem_gib: float
    problems: list[str] = field(default_factory=list)

    def total(self, items: list[MemoryItem]) -> float:
        return sum(item.nbytes for item in items)

    @property
    def train_peak(self) -> float:
        return self.total(self.resident) + self.total(self.train)

    @property
    def rollout_peak(self) -> float:
        return self.total(self.resident) + self.total(self.rollout)

    @property
    def peak(self) -> float:
        return max(self.train_peak, self.rollout_peak)

    @property
    def fits(self) -> bool:
        return not self.problems and self.peak <= self.gpu_mem_gib * GIB


def compute_layer_params(arch: ModelArch) -> int:
    """Parameters of one decoder layer (attention, SwiGLU MLP, two RMSNorms)."""
    h, f = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    qkv = h * (q + 2 * kv) + ((q + 2 * kv) if arch.qkv_bias else 0)
    return qkv + q * h + 3 * h * f + 2 * h


def compute_stage_params(arch: ModelArch, *, tp: int, pp: int) -> int:
    """Parameters on one GPU of the largest pipeline stage (first or last).

    Stage 0 holds the embedding, the last stage the output layer and final norm; with pp=1
    one stage holds both (one matrix when the embeddings are tied)."""
    if arch.num_layers % pp:
        raise ValueError(f"pp={pp} does not divide num_layers={arch.num_layers}")
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    embed = arch.padded_vocab_size(tp) * arch.hidden_size // tp
    layers = arch.num_layers // pp * compute_layer_params(arch) // tp
    if pp == 1:
        return layers + embed * (1 if arch.tie_word_embeddings else 2) + arch.hidden_size
    return layers + embed + arch.hidden_size  # the last stage: output layer + final norm


def compute_state_bytes_per_param(work: Workload, *, dp: int) -> tuple[float, str]:
    """Bytes per parameter of a trained model, and the formula with its numbers."""
    if not work.bf16:
        return 4 + 4 + 8 / dp, f"4 (fp32 w) + 4 (fp32 grad) + 8/dp={dp} (Adam m, v)"
    grad = 4 if work.grad_reduce_in_fp32 else 2
    opt = 12 if grad == 4 else 16
    what = "fp32 master, m, v" + ("" if grad == 4 else ", fp32 main grad")
    return 2 + grad + opt / dp, f"2 (bf16 w) + {grad} (grad) + {opt}/dp={dp} ({what})"


def compute_activation_bytes_per_token(arch: ModelArch, work: Workload, *, tp: int) -> tuple[float, str]:
    """Saved-for-backward bytes of one token in one layer (bf16 activations, no recompute).

    Per layer: both norm inputs and outputs (4h), q/k/v after rope (q + 2kv), attention
    output (q), fc1 output gate+up (2f) and the SwiGLU output (f); flash attention keeps no
    s x s matrix. Norm tensors are split over tp only with sequence parallelism."""
    h, f = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    norm, sharded = 4 * h, 2 * q + 2 * kv + 3 * f
    norm_div = tp if work.sequence_parallel else 1
    return 2 * (norm / norm_div + sharded / tp), (
        f"2 B x (4h={norm}/{norm_div} + (2q+2kv+3f)={sharded}/tp={tp})")


def compute_activation_bytes(arch: ModelArch, work: Workload, *, tp: int) -> tuple[float, str]:
    """Activation bytes on the first pipeline stage for one micro-batch schedule.

    1F1B keeps pp micro-batches of L/pp layers in flight there: L layers of one micro-batch.
    Full recompute keeps only each layer's input (2h B/token) plus one layer being recomputed."""
    tokens = work.micro_batch_size * work.seq_len
    per_tok, formula = compute_activation_bytes_per_token(arch, work, tp=tp)
    where = f"{tokens} tokens (mbs {work.micro_batch_size} x seq {work.seq_len})"
    if work.recompute == "none":
        return tokens * arch.num_layers * per_tok, f"{where} x {arch.num_layers} layers x {per_tok:g} B [{formula}]"
    if work.recompute == "full":
        inp = 2 * arch.hidden_size / (tp if work.sequence_parallel else 1)
        return tokens * (arch.num_layers * inp + per_tok), (
            f"{where} x ({arch.num_layers} layer inputs x {inp:g} B + 1 layer x {per_tok:g} B)")
    raise ValueError(f"recompute must be 'none' or 'full', got {work.recompute!r}")


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def _model_items(arch, work, layout) -> list[MemoryItem]:
    n = compute_stage_params(arch, tp=layout.tp, pp=layout.pp)
    per_param, formula = compute_state_bytes_per_param(work, dp=layout.dp)
    trained = [("policy", True), ("prm", work.train_prm)]
    items = [MemoryItem(f"{name} weights+grads+optimizer", n * per_param,
                        f"{n:,} params/GPU x [{formula}] = {n:,} x {per_param:g} B")
             for name, on in trained if on]
    if work.ref_on_gpu:
        w = 2 if work.bf16 else 4
        items.append(MemoryItem("reference weights", n * w, f"{n:,} params/GPU x {w} B"))
    return items


def _ref_visit_items(arch, work, layout) -> list[MemoryItem]:
    """With model.ref_on_cpu the reference comes to the GPU for its forward; counting it in the
    training peak as well is conservative (its forward-only activations are far smaller)."""
    if work.ref_on_gpu:
        return []
    n = compute_stage_params(arch, tp=layout.tp, pp=layout.pp)
    w = 2 if work.bf16 else 4
    return [MemoryItem("reference weights (visit)", n * w, f"{n:,} params/GPU x {w} B, from host for its forward")]


def _train_items(arch, work, layout) -> list[MemoryItem]:
    act, act_formula = compute_activation_bytes(arch, work, tp=layout.tp)
    tokens = work.micro_batch_size * work.seq_len
    vocab = arch.padded_vocab_size(layout.tp) // layout.tp
    return _ref_visit_items(arch, work, layout) + [
        MemoryItem("activations", act, act_formula),
        MemoryItem("logits", tokens * vocab * 6, f"{tokens} tokens x {vocab} vocab/tp x 6 B "
                   "(bf16 logits + fp32 log-softmax)"),
        MemoryItem("reserve", work.reserve_gib * GIB, f"{work.reserve_gib} GiB fixed"),
    ]


def compute_kv_bytes_per_token(arch: ModelArch, *, sglang_tp: int) -> float:
    """bf16 K and V of every layer for one token, on one SGLang rank (KV heads split or replicated)."""
    kv_heads = max(arch.num_kv_heads // sglang_tp, 1)
    return 2 * arch.num_layers * kv_heads * arch.head_dim * 2


def _rollout_items(arch, work, cluster, problems) -> list[MemoryItem]:
    if not work.colocate:
        return [MemoryItem("reserve", work.reserve_gib * GIB, f"{work.reserve_gib} GiB fixed")]
    share = work.sglang_mem_fraction * cluster.gpu_mem_gib * GIB
    weights = compute_stage_params(arch, tp=work.sglang_tp, pp=1) * 2
    kv_tok = compute_kv_bytes_per_token(arch, sglang_tp=work.sglang_tp)
    seqs = (share - weights) / (kv_tok * work.seq_len)
    if seqs < 1:
        problems.append(f"SGLang share {_gib(share)} holds weights {_gib(weights)} (sglang_tp="
                        f"{work.sglang_tp}) but not one {work.seq_len}-token sequence's KV cache")
    return [
        MemoryItem("sglang weights+kv pool", share,
                   f"mem_fraction {work.sglang_mem_fraction} x {cluster.gpu_mem_gib} GiB; weights "
                   f"{_gib(weights)} at sglang_tp={work.sglang_tp}, KV {kv_tok:g} B/token -> "
                   f"{max(seqs, 0):.0f} concurrent {work.seq_len}-token sequences"),
        MemoryItem("reserve", work.reserve_gib * GIB, f"{work.reserve_gib} GiB fixed"),
    ]


def _layout_problems(arch: ModelArch, cluster: ClusterSpec, work: Workload, layout: Layout) -> list[str]:
    problems = []
    if layout.tp * layout.pp * layout.dp != cluster.world_size:
        problems.append(f"tp={layout.tp} x pp={layout.pp} x dp={layout.dp} != "
                        f"{cluster.world_size} GPUs ({cluster.nodes} nodes x {cluster.gpus_per_node})")
    if layout.tp > cluster.gpus_per_node:
        problems.append(f"tp={layout.tp} spans nodes (gpus_per_node={cluster.gpus_per_node})")
    if arch.num_layers % layout.pp:
        problems.append(f"pp={layout.pp} does not divide num_layers={arch.num_layers}")
    try:
        arch.check_tp(layout.tp)
    except ValueError as err:
        problems.append(f"tp: {err}")
    if arch.num_attention_heads % work.sglang_tp:  # SGLang replicates KV heads, but not query heads
        problems.append(f"sglang_tp={work.sglang_tp} does not divide num_attention_heads="
                        f"{arch.num_attention_heads}")
    return problems


def compute_memory_plan(arch: ModelArch, cluster: ClusterSpec, work: Workload, layout: Layout) -> MemoryPlan:
    """The per-GPU memory of `layout`, item by item with its arithmetic, and what is wrong with it."""
    problems = _layout_problems(arch, cluster, work, layout)
    if problems:  # sizes would be meaningless (uneven shards)
        return MemoryPlan(layout, [], [], [], cluster.gpu_mem_gib, problems)
    rollout = _rollout_items(arch, work, cluster, problems)
    return MemoryPlan(layout, _model_items(arch, work, layout), _train_items(arch, work, layout),
                      rollout, cluster.gpu_mem_gib, problems)


def propose_layouts(arch: ModelArch, cluster: ClusterSpec, work: Workload) -> list[MemoryPlan]:
    """Every tp x pp x dp layout of the cluster, the fitting ones first.

    Among those that fit, the smallest model-parallel group wins (more data parallelism,
    smaller TP/PP communication); ties prefer tp (inside a node) over pp (pipeline bubble).
    The others follow by peak memory."""
    plans = []
    world = cluster.world_size
    for tp in (t for t in range(1, cluster.gpus_per_node + 1) if cluster.gpus_per_node % t == 0):
        for pp in (p for p in range(1, arch.num_layers + 1) if arch.num_layers % p == 0):
            if world % (tp * pp) == 0:
                plans.append(compute_memory_plan(arch, cluster, work, Layout(tp, pp, world // (tp * pp))))
    fitting = sorted((p for p in plans if p.fits), key=lambda p: (p.layout.tp * p.layout.pp, p.layout.pp))
    rest = sorted((p for p in plans if not p.fits), key=lambda p: (bool(p.problems), p.peak))
    return fitting + rest


def read_sbatch_resources(path) -> tuple[int, int]:
    """(nodes, GPUs per node) from the `#SBATCH --nodes=` / `--gpus-per-node=` lines of a script."""
    found = {}
    with open(path) as fh:
        for line in fh:
            match = re.match(r"#SBATCH\s+--(nodes|gpus-per-node)[=\s]+(\S+)", line)
            if match:
                found[match.group(1)] = match.group(2)
    for key in ("nodes", "gpus-per-node"):
        if key not in found or not found[key].isdigit():
            raise ValueError(f"{path}: expected a '#SBATCH --{key}=N' line with a plain integer, "
                             f"got {found.get(key)!r}")
    return int(found["nodes"]), int(found["gpus-per-node"])


def format_plan(plan: MemoryPlan) -> str:
    lay = plan.layout
    lines = [f"layout tp={lay.tp} pp={lay.pp} dp={lay.dp}  ({plan.gpu_mem_gib} GiB GPUs)"]
    for title, items in (("resident", plan.resident), ("+ while training", plan.train),
                         ("+ while SGLang generates", plan.rollout)):
        lines.append(f"  {title}:")
        lines += [f"    {item.name:28s} {_gib(item.nbytes):>12s}   {item.arithmetic}" for item in items]
    lines.append(f"  train peak   {_gib(plan.train_peak)}")
    lines.append(f"  rollout peak {_gib(plan.rollout_peak)}")
    lines += [f"  problem: {p}" for p in plan.problems]
    lines.append(f"  => {'FITS' if plan.fits else 'DOES NOT FIT'} (peak {_gib(plan.peak)} of {plan.gpu_mem_gib} GiB)")
    return "\n".join(lines)
