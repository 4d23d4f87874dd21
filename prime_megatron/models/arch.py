"""The architecture of a Qwen2- or Llama-family decoder, read from a Hugging Face config.

`load_arch` accepts an HF model directory, a config.json path or the parsed dict, and
returns a frozen `ModelArch` holding only what the megatron builder and the HF<->megatron
converters need. It refuses architectures it does not know (MoE, sliding-window-only
models, rope scaling variants) with an error naming them, rather than building a model that
silently differs from the checkpoint.

Left out: rope scaling (Llama-3.1 "llama3" scaling, YaRN) and sliding-window attention;
they raise instead of being ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_FAMILIES = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
}
_MODEL_TYPES = {"qwen2": "qwen2", "llama": "llama"}


@dataclass(frozen=True)
class ModelArch:
    family: str  # "qwen2" | "llama"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    qkv_bias: bool
    tie_word_embeddings: bool
    max_position_embeddings: int

    def __post_init__(self):
        if self.family not in ("qwen2", "llama"):
            raise ValueError(f"ModelArch.family must be 'qwen2' or 'llama', got {self.family!r}")
        if self.num_attention_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads} (GQA needs whole query groups)"
            )

    def padded_vocab_size(self, tp: int, multiple: int = 128) -> int:
        """Vocab rounded up to a multiple of `multiple * tp` (megatron's make_vocab_size_divisible_by rule).

        Every TP shard then holds the same whole number of `multiple`-row blocks, which keeps the
        output GEMM aligned. The extra rows are not real tokens: log-probs mask them out
        (models/logprobs.py, `vocab_size=`) and the HF converters drop them.
        """
        if tp < 1 or multiple < 1:
            raise ValueError(f"padded_vocab_size needs tp >= 1 and multiple >= 1, got tp={tp}, multiple={multiple}")
        step = multiple * tp
        return -(-self.vocab_size // step) * step

    def check_tp(self, tp: int) -> None:
        """Raise if attention heads cannot be split evenly over tp ranks."""
        for name in ("num_attention_heads", "num_kv_heads"):
            if getattr(self, name) % tp != 0:
                raise ValueError(f"{name}={getattr(self, name)} is not divisible by tp={tp}")
        if self.intermediate_size % tp != 0:
            raise ValueError(f"intermediate_size={self.intermediate_size} is not divisible by tp={tp}")


def _read_config(path_or_dict) -> tuple[dict, str]:
    if isinstance(path_or_dict, dict):
        return path_or_dict, "<dict>"
    path = Path(path_or_dict)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"load_arch: no HF config at {path}")
    return json.loads(path.read_text()), str(path)


def _family(cfg: dict, where: str) -> str:
    archs = cfg.get("architectures") or []
    for arch in archs:
        if arch in _FAMILIES:
            return _FAMILIES[arch]
    if not archs and cfg.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[cfg["model_type"]]
    named = archs or [cfg.get("model_type")]
    raise ValueError(
        f"{where}: unsupported architecture {named}; supported: {sorted(_FAMILIES)}"
    )


def _refuse_unsupported_features(cfg: dict, where: str) -> None:
    if cfg.get("rope_scaling"):
        raise ValueError(f"{where}: rope_scaling={cfg['rope_scaling']} is not supported")
    if cfg.get("use_sliding_window"):
        raise ValueError(f"{where}: use_sliding_window=true is not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act={cfg['hidden_act']!r} is not supported (expected 'silu')")
    if cfg.get("mlp_bias"):
        raise ValueError(f"{where}: mlp_bias=true is not supported")


def load_arch(path_or_dict) -> ModelArch:
    """ModelArch from an HF model dir, a config.json path or a config dict."""
    cfg, where = _read_config(path_or_dict)
    family = _family(cfg, where)
    _refuse_unsupported_features(cfg, where)
    if family == "llama" and cfg.get("attention_bias"):
        # HF Llama's attention_bias also puts a bias on o_proj, which megatron's linear_proj lacks here.
        raise ValueError(f"{where}: attention_bias=true (biases on q/k/v and o_proj) is not supported for Llama")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        rope = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        return ModelArch(
            family=family,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rope_theta=float(rope),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            qkv_bias=family == "qwen2",  # Qwen2 always has q/k/v biases; Llama never (see above)
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        )
    except KeyError as err:
        raise ValueError(f"{where}: missing required key {err.args[0]!r}") from None
