"""Build the objects a run needs from its Config: models, optimizers, engine, data, verifiers.

The trainer (train.py) and the supervised warm-up (sft.py) both start here, so both load
weights, tokenizers and data the same way. Each builder takes the config section it needs
and the explicit ParallelState.

Left out: loading weights straight from a Hugging Face directory inside a distributed run;
convert it once with tools/convert_hf_to_megatron.py (the error says so) and point the
config at the result.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prime_megatron.checkpoint.convert import HF_CONFIG_SUBDIR
from prime_megatron.checkpoint.megatron_io import load_model_checkpoint
from prime_megatron.data.loader import load_prompt_dataset
from prime_megatron.data.loader import load_tokenizer as load_hf_tokenizer
from prime_megatron.models.arch import load_arch
from prime_megatron.models.builder import build_model, load_to_device, offload_to_cpu
from prime_megatron.reward.manager import RewardManager, VerifyTask
from prime_megatron.rollout.types import SamplingParams
from prime_megatron.update.optimizer import build_optimizer, wrap_ddp


def hf_files_dir(model_path: str) -> Path:
    """Where config.json and the tokenizer live: the HF dir itself, or a megatron checkpoint's
    `hf_config/` (written by the converter and by `prime-megatron sft`)."""
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    for candidate in (path, path / HF_CONFIG_SUBDIR):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no config.json (nor {HF_CONFIG_SUBDIR}/config.json); expected an HF model "
                            "directory or a checkpoint written by prime-megatron")


def resolve_arch(model_path: str):
    return load_arch(hf_files_dir(model_path))


def load_tokenizer(path: str):
    return load_hf_tokenizer(hf_files_dir(path))


def load_weights(model, path: str, *, parallel) -> None:
    """Load a megatron dist checkpoint into `model`; refuse an HF directory with the fix."""
    path = Path(path)
    if (path / "metadata.json").is_file():
        load_model_checkpoint(model, path, parallel=parallel)
        return
    if any(path.glob("*.safetensors")):
        raise ValueError(f"{path} is a Hugging Face checkpoint; convert it first:\n  python tools/"
                         f"convert_hf_to_megatron.py --hf-dir {path} --out {path}-megatron --tp 1 --pp 1\n"
                         "and point the config at the output (any TP/PP loads it)")
    raise FileNotFoundError(f"{path}: neither a megatron checkpoint (metadata.json) nor HF weights")


def build_trainable(arch, init_path: str | None, *, parallel, lr: float, weight_decay: float,
                    clip_grad: float, betas=(0.9, 0.999), bf16: bool = False):
    """(DDP-wrapped model, DistributedOptimizer); random init when init_path is None."""
    import torch

    model = build_model(arch, parallel=parallel, params_dtype=torch.bfloat16 if bf16 else torch.float32)
    if init_path is not None:
        load_weights(model, init_path, parallel=parallel)  # before DDP wrapping: plain GPTModel keys
    model = wrap_ddp(model, parallel=parallel)
    optimizer = build_optimizer(model, lr=lr, weight_decay=weight_decay, clip_grad=clip_grad, parallel=parallel,
                                bf16=bf16, adam_betas=tuple(betas))
    return model, optimizer


def build_frozen(arch, init_path: str, *, parallel, bf16: bool = False, offload: bool = False):
    import torch

    model = build_model(arch, parallel=parallel, trainable=False,
                        params_dtype=torch.bfloat16 if bf16 else torch.float32)
    load_weights(model, init_path, parallel=parallel)
    if offload:
        offload_to_cpu(model)
    return model


@contextmanager
def resident(model, *, offload: bool):
    """Keep a frozen model in host memory between uses (model.ref_on_cpu): bring it to the
    accelerator for the body, send it back after. No-op when `offload` is False or on CPU."""
    if offload:
        load_to_device(model)
    try:
        yield model
    finally:
        if offload:
            offload_to_cpu(model)


def set_lr(optimizer, base_lr: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up to base_lr over warmup_steps, then constant (a pure function of step)."""
    lr = base_lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else base_lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def build_engine(cfg, policy, *, parallel, arch):
    if cfg.rollout.engine == "megatron":
        from prime_megatron.rollout.megatron_native import MegatronNativeEngine

        return MegatronNativeEngine(policy, parallel=parallel, arch=arch)
    from prime_megatron.rollout.sglang_engine import SGLangEngine

    # SGLang starts from the policy's HF config and tokenizer with placeholder weights
    # (load_format="dummy"); the trainer streams the real ones in before the first rollout.
    return SGLangEngine(str(hf_files_dir(cfg.model.policy_path)), tp=cfg.rollout.sglang_tp, parallel=parallel,
                        seed=cfg.trainer.seed, mode="colocated" if cfg.rollout.colocate else "distributed",
                        mem_fraction_static=cfg.rollout.sglang_mem_fraction, load_format="dummy")


def sampling_params(cfg, tokenizer, *, temperature: float | None = None, n: int | None = None,
                    seed: int = 0) -> SamplingParams:
    return SamplingParams(
        n=cfg.rollout.n if n is None else n,
        temperature=cfg.rollout.temperature if temperature is None else temperature,
        top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_response_len,
        stop_token_ids=(tokenizer.eos_token_id,),
        seed=seed,
    )


@dataclass
class Scorer:
    """Decode responses and grade them with the outcome verifiers (rank 0 runs it)."""
    tokenizer: object
    manager: RewardManager

    def __call__(self, prompts, samples) -> tuple[list[float], dict[str, int]]:
        k = len(samples) // len(prompts)
        tasks = [VerifyTask(prompts[i // k].record.kind,
                            self.tokenizer.decode(s.response_ids, skip_special_tokens=True),
                            prompts[i // k].record.ground_truth)
                 for i, s in enumerate(samples)]
        result = self.manager.score(tasks)
        return list(result.scores), dict(result.failures)


def build_scorer(cfg, tokenizer) -> Scorer:
    v = cfg.reward.verifier
    return Scorer(tokenizer, RewardManager(num_workers=v.num_workers, math_timeout_s=v.math_timeout_s,
                                           code_timeout_s=v.code_timeout_s, code_max_cases=v.code_max_cases))


def load_prompts(files, tokenizer, cfg):
    return load_prompt_dataset(files, tokenizer, max_prompt_len=cfg.rollout.max_prompt_len,
                               prompt_key=cfg.data.prompt_key, ability_key=cfg.data.ability_key,
                               data_source_key=cfg.data.data_source_key)


__all__ = ["hf_files_dir", "resolve_arch", "load_weights", "build_trainable", "build_frozen", "resident", "set_lr", "build_engine",
           "sampling_params", "Scorer", "build_scorer", "load_prompts", "load_tokenizer"]
