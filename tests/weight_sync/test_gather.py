"""Weight resharding: buckets on hand-made tensors; the TP=2 x PP=2 stream against the HF
converter (bitwise) and against a transformers model's logits (through a test receiver)."""
import numpy as np
import pytest
import torch

from prime_megatron.weight_sync.buckets import bucketize, flatten_bucket, unflatten_bucket
from tests.distributed import run_distributed

ARCH = dict(family="qwen2", vocab_size=250, hidden_size=64, intermediate_size=96, num_layers=4,
            num_attention_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6,
            qkv_bias=True, tie_word_embeddings=False, max_position_embeddings=64)
TOKENS = [[5, 17, 42, 8, 99, 3, 200, 249], [1, 2, 3, 4, 5, 6, 7, 8]]
# Logits tolerance: the same fp32 weights and math, but megatron (local spec, unfused RMSNorm,
# its own rope and softmax) and transformers (sdpa attention) sum in different orders and TP
# splits the hidden/ffn reductions. For this 4-layer hidden-64 model (logit std > 1) the
# measured max difference is 6.5e-6 (fp32 rounding); a mis-mapped tensor (swapped q/k,
# gate/up, wrong layer) changes logits by O(0.1-1).
LOGITS_ATOL = 1e-4


def test_bucketize_respects_bound_and_order():
    f32 = [("a", torch.zeros(10)), ("b", torch.zeros(20)), ("c", torch.zeros(5)), ("d", torch.zeros(100)),
           ("e", torch.zeros(1))]
    # 4-byte floats, bound 120 bytes: a+b = 120 fits; c (20) overflows -> new bucket; d (400)
    # exceeds the bound and goes alone; e starts the last bucket.
    got = [[name for name, _ in bucket] for bucket in bucketize(f32, bucket_bytes=120)]
    assert got == [["a", "b"], ["c"], ["d"], ["e"]]
    assert list(bucketize([], bucket_bytes=8)) == []
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(bucketize(f32, bucket_bytes=0))


def test_bucketize_is_lazy():
    def stream():
        yield "x", torch.zeros(4)
        yield "y", torch.zeros(4)
        raise AssertionError("read past the second bucket")

    first = next(bucketize(stream(), bucket_bytes=16))  # 16 bytes: exactly one tensor
    assert [n for n, _ in first] == ["x"]


def test_flatten_roundtrip_is_bitwise_with_mixed_dtypes():
    bucket = [("w", torch.randn(3, 5)), ("b", torch.randn(7).to(torch.bfloat16)), ("i", torch.arange(4)),
              ("t", torch.randn(4, 6)[:, ::2])]  # non-contiguous input
    flat = flatten_bucket(bucket)
    # 16-byte aligned starts: w [0, 60), b [64, 78), i [80, 112), t [112, 160).
    assert flat.spans == ((0, 60), (64, 78), (80, 112), (112, 160))
    packed = flatten_bucket(bucket, align_bytes=1)
    assert packed.nbytes == 15 * 4 + 7 * 2 + 4 * 8 + 12 * 4
    assert torch.equal(packed.buffer[60:74], flat.buffer[64:78])
    for (name, want), (got_name, got) in zip(bucket, unflatten_bucket(flat)):
        assert name == got_name and got.dtype == want.dtype and torch.equal(got, want)
    staging = torch.full((200,), 7, dtype=torch.uint8)  # reused buffer with stale bytes
    reused = flatten_bucket(bucket, out=staging)
    assert reused.buffer.data_ptr() == staging.data_ptr() and torch.equal(reused.buffer, flat.buffer)
    with pytest.raises(ValueError, match="160 bytes"):
        flatten_bucket(bucket, out=torch.empty(100, dtype=torch.uint8))


class TransformersTestReceiver:
    """Test stand-in for a rollout engine: the `update_weights(named_tensors)` interface
    loading into a transformers model. Not an engine; it only checks the weight stream."""

    def __init__(self, model):
        self.model, self.loaded = model, set()

    def update_weights(self, named_tensors):
        named = dict(named_tensors)
        result = self.model.load_state_dict(named, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        self.loaded |= set(named)


def hf_config(arch):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
                       intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_layers,
                       num_attention_heads=arch.num_attention_heads, num_key_value_heads=arch.num_kv_heads,
                       head_dim=arch.head_dim, rope_theta=arch.rope_theta, rms_norm_eps=arch.rms_norm_eps,
                       tie_word_embeddings=arch.tie_word_embeddings,
                       max_position_embeddings=arch.max_position_embeddings,
                       # 10x HF's default init scale: logits of order 1-10 and peaked attention,
                       # so a mis-mapped tensor shows far above the tolerance.
                       initializer_range=0.2)


def _megatron_logits(model, parallel, ids):
    """Plain pipeline forward (stage -> stage point-to-point); full-vocab logits on the last stage."""
    import torch.distributed as dist

    positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        if not parallel.is_first_stage:
            hidden = torch.empty(ids.shape[1], ids.shape[0], model.config.hidden_size)
            dist.recv(hidden, src=dist.get_global_rank(parallel.pp_group, parallel.pp_rank - 1))
            model.set_input_tensor(hidden)
        out = model(ids, positions, None, runtime_gather_output=True)
    if not parallel.is_last_stage:
        dist.send(out.contiguous(), dst=dist.get_global_rank(parallel.pp_group, parallel.pp_rank + 1))
        return None
    return out[..., : ARCH["vocab_size"]].numpy()


def _worker(rank, world_size, tmp):
    from safetensors.torch import save_file
    from transformers import Qwen2ForCausalLM

    from prime_megatron.checkpoint.megatron_io import load_model_checkpoint
    from prime_megatron.models.arch import ModelArch
    from prime_megatron.models.builder import build_model
    from prime_megatron.parallel import destroy_parallel, init_parallel
    from prime_megatron.weight_sync.gather import iter_hf_tensors, iter_hf_tensors_on_rank

    parallel = init_parallel(tp=2, pp=2, seed=3)
    arch = ModelArch(**ARCH)
    model = build_model(arch, parallel=parallel)
    load_model_checkpoint(model, f"{tmp}/ckpt", parallel=parallel)  # the policy being synced
    model.eval()
    out = {"stage_names": [name for name, _ in iter_hf_tensors(model, parallel=parallel, arch=arch)],
           "pp_rank": parallel.pp_rank, "tp_rank": parallel.tp_rank}
    streamed = list(iter_hf_tensors_on_rank(model, parallel=parallel, arch=arch, dst=0))
    ids = torch.tensor(TOKENS)
    out["megatron_logits"] = _megatron_logits(model, parallel, ids)
    if rank == 0:
        save_file({name: t.contiguous() for name, t in streamed}, f"{tmp}/streamed.safetensors")
        out["streamed_order"] = [name for name, _ in streamed]
        torch.manual_seed(1)  # a different random model: every tensor must be overwritten
        receiver = TransformersTestReceiver(Qwen2ForCausalLM(hf_config(arch)).eval())
        for bucket in bucketize(streamed, bucket_bytes=64 << 10):  # several buckets
            receiver.update_weights(bucket)
        out["loaded"] = sorted(receiver.loaded)
        with torch.no_grad():
            out["hf_logits"] = receiver.model(ids).logits.numpy()
    destroy_parallel()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A random HF Qwen2 -> megatron checkpoint (TP=2, PP=2 layout) -> back to HF with the
    converter (the reference), and the 4-rank job that loads the checkpoint and streams it."""
    from transformers import Qwen2ForCausalLM

    from prime_megatron.checkpoint.convert import convert_hf_to_megatron, convert_megatron_to_hf
    from prime_megatron.models.arch import ModelArch

    tmp = tmp_path_factory.mktemp("weight_sync")
    torch.manual_seed(0)
    Qwen2ForCausalLM(hf_config(ModelArch(**ARCH))).save_pretrained(tmp / "hf_src")
    convert_hf_to_megatron(tmp / "hf_src", tmp / "ckpt", tp=2, pp=2, progress=False)
    convert_megatron_to_hf(tmp / "ckpt", tmp / "hf_export", progress=False)
    return tmp, run_distributed(_worker, world_size=4, args=(str(tmp),), timeout_s=240)


def test_stream_equals_hf_converter_bitwise(run):
    from safetensors.torch import load_file

    tmp, _ = run
    converted = {}
    for shard in sorted((tmp / "hf_export").glob("*.safetensors")):
        converted.update(load_file(shard))
    streamed = load_file(tmp / "streamed.safetensors")
    assert sorted(streamed) == sorted(converted)
    for name, tensor in converted.items():
        assert streamed[name].dtype == tensor.dtype and torch.equal(streamed[name], tensor), name


def test_each_stage_sender_streams_its_own_layers_only(run):
    _, results = run
    for r in results:
        names = r["stage_names"]
        if r["tp_rank"] != 0:
            assert names == []  # TP peers take part in the all-gathers but do not send
            continue
        layers = {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}
        assert layers == ({0, 1} if r["pp_rank"] == 0 else {2, 3})  # global layer indices
        assert ("model.embed_tokens.weight" in names) == (r["pp_rank"] == 0)
        assert ("lm_head.weight" in names) == (r["pp_rank"] == 1)
    order = results[0]["streamed_order"]
    assert order[0] == "model.embed_tokens.weight" and order[-1] == "lm_head.weight"


def test_receiver_logits_equal_megatron_policy(run):
    from prime_megatron.checkpoint.hf_mapping import hf_param_shapes
    from prime_megatron.models.arch import ModelArch

    _, results = run
    rank0 = results[0]
    assert rank0["loaded"] == sorted(hf_param_shapes(ModelArch(**ARCH)))  # every HF tensor arrived
    megatron = next(r["megatron_logits"] for r in results if r["megatron_logits"] is not None)
    assert megatron.shape == rank0["hf_logits"].shape == (2, 8, ARCH["vocab_size"])
    assert megatron.std() > 1.0  # the comparison is not between near-zero logits
    diff = np.abs(rank0["hf_logits"] - megatron).max()
    print(f"max |HF - megatron| logits = {diff:.2e}")
    assert diff < LOGITS_ATOL, diff
