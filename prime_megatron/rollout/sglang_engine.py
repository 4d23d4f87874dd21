"""Rollout on GPU clusters through SGLang's offline `sglang.Engine`.

Two ways to refresh the weights after a policy update (both take HF-named full tensors,
the output of `prime_megatron.weight_sync.iter_hf_tensors`):

* colocated (`mode="colocated"`): SGLang shares the training GPUs. `sleep()` releases its
  weights and KV cache (`release_memory_occupation`, needs `enable_memory_saver`); a
  following `update_weights` retakes only the weights region and refills it, and `wake()`
  retakes the rest (order per step: generate, sleep, train, update_weights, wake). Updates go through `update_weights_from_tensor` with
  `load_format="flattened_bucket"`: each bucket is one CUDA buffer whose IPC handle is
  serialised once per SGLang TP rank, so no tensor data is copied through pickles.
* separate GPUs (`mode="distributed"`): `connect_update_group` builds an NCCL group whose
  rank 0 is this (trainer) process and whose other ranks are SGLang's TP workers; each
  bucket is then broadcast as one flat buffer while SGLang runs
  `update_weights_from_distributed(..., load_format="flattened_bucket")`.

Around an update generation is paused and the radix/KV cache flushed once at the end.

Placement: the trainer calls every engine method on every rank (the RL loop is SPMD). The
`sglang.Engine` lives on global rank 0 (`engine_rank`), which runs SGLang's own TP workers
over `tp` GPUs of its node; `generate` results are broadcast so every rank holds the same
samples, and `update_weights` takes each rank's own `iter_hf_tensors` stream and funnels
the pipeline stages' tensors to rank 0 (`weight_sync.gather.forward_to_rank`).

Log-probs: SGLang by default reports log-probs of the temperature-scaled distribution; we
set `SGLANG_RETURN_ORIGINAL_LOGPROB=1` before it starts so that, like the megatron-native
engine, `Sample.logprobs` are the raw model log-probs at temperature 1.

Written against sglang 0.5.11-0.5.17 (Engine API read from the wheel). sglang is imported
lazily; without it, or without a CUDA GPU, construction fails saying what to install.
This engine cannot run on the CPU machines; the megatron-native engine is the CPU twin.
Left out: multi-node SGLang, streaming, LoRA.
"""
from __future__ import annotations

import os
import threading
from typing import Iterable, Literal

import torch

from prime_megatron.rollout.types import Sample, SamplingParams, check_prompts
from prime_megatron.weight_sync.buckets import DEFAULT_BUCKET_BYTES, bucketize, flatten_bucket

INSTALL_HINT = (
    "SGLangEngine needs SGLang and a CUDA GPU: `pip install 'sglang[all]>=0.5.11,<0.6'` "
    "(or `pip install prime-megatron[gpu]`) in a CUDA environment. On CPU use "
    "rollout.engine=megatron."
)


def _import_sglang():
    if not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA device visible. {INSTALL_HINT}")
    try:
        import sglang
    except ImportError as err:
        raise RuntimeError(f"cannot import sglang ({err}). {INSTALL_HINT}") from err
    return sglang


def _parse_output(out: dict, prompt_index: int) -> Sample:
    """One SGLang result dict -> Sample. `output_token_logprobs` holds (logprob, id, text)."""
    meta = out["meta_info"]
    token_logprobs = meta["output_token_logprobs"]
    ids = [int(tok) for _, tok, *_ in token_logprobs]
    if "output_ids" in out and list(out["output_ids"]) != ids:
        raise RuntimeError(f"SGLang output_ids and output_token_logprobs disagree for prompt {prompt_index}")
    finish = meta["finish_reason"]["type"]
    if finish not in ("stop", "length"):
        raise RuntimeError(f"SGLang request for prompt {prompt_index} ended with {meta['finish_reason']!r}")
    return Sample(prompt_index, ids, [float(lp) for lp, *_ in token_logprobs], finish)


class SGLangEngine:
    """`RolloutEngine` over an in-process `sglang.Engine` held by global rank 0; collective."""

    engine_rank = 0

    def __init__(
        self,
        model_path: str,
        *,
        tp: int,
        parallel=None,
        mode: Literal["colocated", "distributed"] = "colocated",
        mem_fraction_static: float = 0.5,
        seed: int = 0,
        dtype: str = "bfloat16",
        deterministic: bool = False,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        **engine_kwargs,
    ):
        if mode not in ("colocated", "distributed"):
            raise ValueError(f"SGLangEngine mode must be 'colocated' or 'distributed', got {mode!r}")
        os.environ["SGLANG_RETURN_ORIGINAL_LOGPROB"] = "1"  # read by the scheduler processes
        sglang = _import_sglang()  # on every rank: fail everywhere, with the same message
        self.mode, self.tp, self.bucket_bytes, self.deterministic = mode, tp, bucket_bytes, deterministic
        self.parallel = parallel
        self.dtype = getattr(torch, dtype)  # tensors are cast to it before bucketing: fewer bytes sent
        self._group_name: str | None = None
        self._group = None
        self._released: set[str] = set()  # SGLang memory regions given back by sleep()
        self.engine = None
        if not self._is_engine_rank:
            return
        if deterministic:
            # Per-request sampling seeds are honoured only by the torch sampling backend.
            engine_kwargs.update(enable_deterministic_inference=True, sampling_backend="pytorch")
        self.engine = sglang.Engine(
            model_path=model_path,
            tp_size=tp,
            dtype=dtype,
            mem_fraction_static=mem_fraction_static,
            random_seed=seed,
            skip_tokenizer_init=True,
            enable_memory_saver=(mode == "colocated"),
            **engine_kwargs,
        )
        if mode == "distributed":
            # SGLang's workers run on this node, so the group rendezvous is local.
            self.connect_update_group("127.0.0.1", _free_port())

    @property
    def _is_engine_rank(self) -> bool:
        return not torch.distributed.is_initialized() or torch.distributed.get_rank() == self.engine_rank

    def _share(self, value):
        """Broadcast a picklable value from the engine rank to every rank."""
        if not torch.distributed.is_initialized():
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=self.engine_rank)
        return box[0]

    # ---- generation -------------------------------------------------------------------------
    def _request_params(self, params: SamplingParams, index: int) -> dict:
        request = {
            "n": 1,  # we repeat prompts ourselves so the n samples stay adjacent and in order
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "stop_token_ids": list(params.stop_token_ids),
            "skip_special_tokens": False,
            "no_stop_trim": True,  # keep the stop token in the response, as the native engine does
        }
        if self.deterministic:  # otherwise SGLang draws from its engine-wide random_seed stream
            request["sampling_seed"] = params.seed * 1_000_003 + index
        return request

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> list[Sample]:
        """Collective: rank 0 generates, every rank returns the same samples."""
        check_prompts(prompt_token_ids)
        return self._share(self._generate_local(prompt_token_ids, params) if self._is_engine_rank else None)

    def _generate_local(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> list[Sample]:
        expanded = [ids for ids in prompt_token_ids for _ in range(params.n)]
        outputs = self.engine.generate(
            input_ids=[list(map(int, ids)) for ids in expanded],
            sampling_params=[self._request_params(params, i) for i in range(len(expanded))],
            return_logprob=True,
        )
        return [_parse_output(out, i // params.n) for i, out in enumerate(outputs)]

    # ---- memory -----------------------------------------------------------------------------
    # Colocated memory states: SGLang's memory saver discards released contents (no CPU
    # backup), so weights are retaken only when new ones are pushed (update_weights while
    # asleep retakes just the "weights" region) and wake() retakes whatever is still released.
    def sleep(self) -> None:
        if self.mode == "colocated" and self._is_engine_rank and not self._released:
            self.engine.flush_cache()
            self.engine.release_memory_occupation()
            self._released = {"weights", "kv_cache", "cuda_graph"}

    def wake(self) -> None:
        if self.mode == "colocated" and self._is_engine_rank and self._released:
            if "weights" in self._released:
                raise RuntimeError("SGLangEngine.wake(): the weights were released by sleep() and not "
                                   "reloaded; call update_weights() before wake()")
            self.engine.resume_memory_occupation(tags=sorted(self._released))
            self._released = set()

    def _retake_weights(self) -> None:
        if "weights" in self._released:
            self.engine.resume_memory_occupation(tags=["weights"])
            self._released.discard("weights")

    # ---- weight updates -----------------------------------------------------------------------
    def _pause(self) -> None:
        # Engine.pause_generation exists only in newer releases; older ones expose it on the
        # tokenizer manager (same request object).
        if hasattr(self.engine, "pause_generation"):
            self.engine.pause_generation()
            return
        from sglang.srt.managers.io_struct import PauseGenerationReqInput

        self.engine.loop.run_until_complete(
            self.engine.tokenizer_manager.pause_generation(PauseGenerationReqInput(mode="abort"))
        )

    def _continue(self) -> None:
        if hasattr(self.engine, "continue_generation"):
            self.engine.continue_generation()
            return
        from sglang.srt.managers.io_struct import ContinueGenerationReqInput

        self.engine.loop.run_until_complete(
            self.engine.tokenizer_manager.continue_generation(ContinueGenerationReqInput())
        )

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named full tensors bucket by bucket, then flush the cache once.

        Collective when `parallel` is given: each rank passes its own `iter_hf_tensors`
        stream; the stages' tensors are funnelled to the engine rank.
        """
        if self.parallel is not None:
            from prime_megatron.weight_sync.gather import forward_to_rank

            named_tensors = forward_to_rank(iter(named_tensors), parallel=self.parallel, dst=self.engine_rank)
        if not self._is_engine_rank:
            for _ in named_tensors:  # drive the sends / all-gathers of this rank
                pass
            return
        if self.mode == "distributed" and self._group is None:
            raise RuntimeError("SGLangEngine(mode='distributed'): call connect_update_group() first")
        self._retake_weights()
        self._pause()
        try:
            cast = ((name, t.to(self.dtype) if t.is_floating_point() else t) for name, t in named_tensors)
            for bucket in bucketize(cast, self.bucket_bytes):
                if self.mode == "colocated":
                    self._send_bucket_ipc(bucket)
                else:
                    self._send_bucket_nccl(bucket)
            self.engine.flush_cache()
        finally:
            self._continue()

    def _send_bucket_ipc(self, bucket) -> None:
        from sglang.srt.utils import MultiprocessingSerializer
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

        device = torch.cuda.current_device()
        flat = FlattenedTensorBucket(named_tensors=[(n, t.to(device)) for n, t in bucket])
        payload = {"flattened_tensor": flat.get_flattened_tensor(), "metadata": flat.get_metadata()}
        serialized = MultiprocessingSerializer.serialize(payload, output_str=True)
        ok, message = self.engine.update_weights_from_tensor(
            named_tensors=[serialized] * self.tp, load_format="flattened_bucket", flush_cache=False
        )
        if not ok:
            raise RuntimeError(f"SGLang update_weights_from_tensor failed: {message}")

    def connect_update_group(self, master_address: str, master_port: int, group_name: str = "prime_weights") -> None:
        """Join an NCCL group {this process: rank 0, SGLang TP workers: ranks 1..tp}."""
        from sglang.srt.utils import init_custom_process_group

        result: dict = {}
        remote = threading.Thread(  # both sides block in the rendezvous, so one runs in a thread
            target=lambda: result.update(reply=self.engine.init_weights_update_group(
                master_address, master_port, 1, self.tp + 1, group_name, backend="nccl")))
        remote.start()
        self._group = init_custom_process_group(
            backend="nccl", init_method=f"tcp://{master_address}:{master_port}",
            world_size=self.tp + 1, rank=0, group_name=group_name,
        )
        remote.join()
        ok, message = result["reply"]
        if not ok:
            raise RuntimeError(f"SGLang init_weights_update_group failed: {message}")
        self._group_name = group_name

    def _send_bucket_nccl(self, bucket) -> None:
        # align_bytes=1: SGLang rebuilds the receive buffer with its FlattenedTensorBucket,
        # tensors back to back in order, and fills it with one broadcast from rank 0.
        flat = flatten_bucket(bucket, device=torch.device("cuda", torch.cuda.current_device()), align_bytes=1)
        result: dict = {}
        remote = threading.Thread(target=lambda: result.update(reply=self.engine.update_weights_from_distributed(
            names=list(flat.names), dtypes=[str(d).removeprefix("torch.") for d in flat.dtypes],
            shapes=[list(s) for s in flat.shapes], group_name=self._group_name,
            flush_cache=False, load_format="flattened_bucket")))
        remote.start()
        torch.distributed.broadcast(flat.buffer, src=0, group=self._group)
        remote.join()
        ok, message = result["reply"]
        if not ok:
            raise RuntimeError(f"SGLang update_weights_from_distributed failed: {message}")

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
