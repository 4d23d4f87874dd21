"""SGLangEngine: what can be checked without a GPU (the install message, parsing SGLang's
result format) and, on a GPU with sglang installed, colocated update-from-tensor against
transformers log-probs on a random tiny Qwen2."""
import importlib.util

import pytest
import torch

from prime_megatron.rollout.sglang_engine import SGLangEngine, _parse_output
from prime_megatron.rollout.types import SamplingParams

HAVE_GPU_SGLANG = torch.cuda.is_available() and importlib.util.find_spec("sglang") is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_gpu_says_what_to_install():
    with pytest.raises(RuntimeError, match=r"pip install .*sglang.*rollout.engine=megatron"):
        SGLangEngine("/nonexistent", tp=1)


def test_parse_output_reads_sglang_result_format():
    # Shape of one `Engine.generate(..., return_logprob=True)` result (sglang 0.5.x,
    # skip_tokenizer_init: no text): output_token_logprobs holds (logprob, token_id, text).
    out = {"output_ids": [11, 7], "meta_info": {
        "output_token_logprobs": [(-0.5, 11, None), (-1.25, 7, None)],
        "finish_reason": {"type": "stop", "matched": 7}}}
    sample = _parse_output(out, prompt_index=3)
    assert (sample.prompt_index, sample.response_ids, sample.logprobs, sample.finish_reason) == (
        3, [11, 7], [-0.5, -1.25], "stop")
    aborted = {"meta_info": {"output_token_logprobs": [], "finish_reason": {"type": "abort", "message": "x"}}}
    with pytest.raises(RuntimeError, match="prompt 4.*abort"):
        _parse_output(aborted, prompt_index=4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU_SGLANG, reason="needs a CUDA GPU and sglang")
def test_colocated_update_from_tensor_matches_transformers(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, torch_dtype="float32")
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "a")
    torch.manual_seed(1)
    target = Qwen2ForCausalLM(config).eval()  # the weights pushed in
    engine = SGLangEngine(str(tmp_path / "a"), tp=1, dtype="float32", mem_fraction_static=0.3)
    try:
        engine.sleep()  # the RL loop's order: rollout, sleep, train, push weights, wake
        engine.update_weights(target.state_dict().items())
        engine.wake()
        prompts = [[1, 2, 3, 4], [9, 8, 7]]
        samples = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=1))
    finally:
        engine.shutdown()
    assert [s.prompt_index for s in samples] == [0, 0, 1, 1]
    for s in samples:
        ids = torch.tensor([prompts[s.prompt_index] + s.response_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(target(ids).logits[0, :-1].float(), -1)
        want = logprobs[len(prompts[s.prompt_index]) - 1:].gather(-1, ids[0, len(prompts[s.prompt_index]):, None])
        # fp32 on both sides, different kernels (SGLang's attention backend vs eager torch):
        # agreement to 1e-3 in log-prob; stale weights would differ by O(1).
        assert torch.allclose(torch.tensor(s.logprobs), want.squeeze(-1), atol=1e-3)
