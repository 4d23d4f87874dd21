"""The experiment configuration: one nested dataclass tree, loaded strictly from YAML.

A YAML file sets only what differs from the defaults below; dotted command-line
overrides (``rollout.n=8``) are applied on top. Loading is strict: an unknown key
is an error naming the full dotted key, the file and the closest valid key; a
value of the wrong type is an error naming the key and the expected type; ranges
and cross-field constraints are checked after everything is merged.

Defaults follow the PRIME paper (Cui et al. 2025, arXiv 2502.01456, Sec. 4 and
Algorithm 1) and the public PRIME recipe where the paper is silent; each such
default says where it comes from.

Deliberately left out: environment-variable interpolation, config inheritance
between YAML files, and any knowledge of how a section is consumed.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

__all__ = [
    "Config", "ConfigError", "load_config", "config_from_dict", "config_to_dict", "config_to_yaml",
    "ModelConfig", "ParallelConfig", "RolloutConfig", "VerifierConfig", "RewardConfig",
    "FilterConfig", "UpdateConfig", "OptimConfig", "OptimGroupConfig", "DataConfig",
    "SFTConfig", "TrainerConfig", "CheckpointConfig", "LoggingConfig",
]


class ConfigError(ValueError):
    """A configuration file or override is malformed; the message names the key."""


@dataclass
class ModelConfig:
    # Each path is a Hugging Face model dir or a megatron checkpoint dir. Paper: policy,
    # PRM and reference all start from the SFT model, so prm/ref default to the policy.
    policy_path: str = ""
    prm_path: Optional[str] = None
    ref_path: Optional[str] = None
    tokenizer_path: Optional[str] = None  # default: policy_path
    ref_on_cpu: bool = False  # keep the frozen reference in host memory between its forwards
    bf16: bool = False

    @property
    def prm_init(self) -> str:
        return self.prm_path or self.policy_path

    @property
    def ref_init(self) -> str:
        return self.ref_path or self.policy_path

    @property
    def tokenizer_dir(self) -> str:
        return self.tokenizer_path or self.policy_path


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1


@dataclass
class RolloutConfig:
    engine: Literal["megatron", "sglang"] = "megatron"
    n: int = 4  # K samples per prompt; paper: 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompt_len: int = 1024  # paper: 1024
    max_response_len: int = 3072  # paper: 3072
    sglang_tp: int = 1
    colocate: bool = True  # sglang shares the training GPUs (sleep/wake) instead of its own
    sglang_mem_fraction: float = 0.5


@dataclass
class VerifierConfig:
    num_workers: int = 4
    math_timeout_s: float = 5.0
    code_timeout_s: float = 5.0
    code_max_cases: int = 10


@dataclass
class RewardConfig:
    beta: float = 0.05  # paper: beta = 0.05
    prm_loss: Literal["ce", "dpo"] = "ce"  # paper: cross-entropy on outcome labels
    # "after": rewards come from the same PRM forward that is then trained (paper Algorithm 1
    # order: compute rewards, then update the PRM); "before": update first, recompute rewards.
    prm_update: Literal["after", "before"] = "after"
    granularity: Literal["token", "whole"] = "token"
    # The PRIME recipe weights both reward sources by 5 (reward_dpo_coef / reward_gt_coef);
    # with whiten=true a common scale of both coefficients cancels, so 1/1 equals its 5/5.
    process_coef: float = 1.0
    outcome_coef: float = 1.0
    gamma: float = 1.0  # PRIME recipe: undiscounted returns
    whiten: bool = True  # the reference implementations whiten the summed returns
    verifier: VerifierConfig = field(default_factory=VerifierConfig)


@dataclass
class FilterConfig:
    enabled: bool = True
    acc_low: float = 0.2  # paper: keep prompts with accuracy in [0.2, 0.8]
    acc_high: float = 0.8
    drop_truncated: bool = False


@dataclass
class UpdateConfig:
    micro_batch_size: int = 8
    ppo_epochs: int = 1
    ppo_mini_batches: int = 1  # PRIME recipe: one policy update per rollout batch
    prm_mini_batches: int = 1
    clip_ratio: float = 0.2  # paper: PPO clip 0.2
    clip_ratio_high: Optional[float] = None  # None: symmetric clip
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    entropy_coef: float = 0.0
    kl_coef: float = 0.0  # paper: no KL term
    # "logits": the model's vocab-parallel logits shard, log-probs chunked over tokens, padded
    # vocabulary rows excluded (the safe default, matching the rollout sampler). "chunked" /
    # "triton" / "te": fused kernels on the final hidden states (prime_megatron/kernels) that never
    # hold full-vocabulary fp32 logits; they need an unpadded vocabulary (vocab % (128*tp) == 0).
    logprob_impl: Literal["logits", "chunked", "triton", "te"] = "logits"


@dataclass
class OptimConfig:
    lr: float = 5e-7
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    warmup_steps: int = 0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class OptimGroupConfig:
    policy: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-7))  # paper: 5e-7
    prm: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6))  # paper: 1e-6


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    prompt_key: str = "prompt"
    ability_key: str = "ability"
    data_source_key: str = "data_source"
    batch_size: int = 256  # prompts per step after filtering; paper: 256
    shuffle: bool = True
    shuffle_seed: int = 1


@dataclass
class SFTConfig:
    """Supervised warm-up (``prime-megatron sft``): prompt + response pairs, loss on the response."""
    train_files: list[str] = field(default_factory=list)
    init_path: str = ""  # HF dir: config.json only -> random init; or a megatron checkpoint to continue
    output_dir: str = ""
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 0
    max_len: int = 4096


@dataclass
class TrainerConfig:
    total_steps: int = 592  # paper: Eurus-2-7B-PRIME is the step-592 checkpoint
    seed: int = 42
    eval_every: int = 16  # 0 disables evaluation
    eval_size: int = 0  # held-out prompts per evaluation; 0 means the whole val set
    eval_temperature: float = 0.0  # greedy held-out accuracy


@dataclass
class CheckpointConfig:
    dir: str = "runs/checkpoints"
    save_every: int = 50  # 0: only on SIGTERM/SIGUSR1 and at the end
    keep_last: int = 2


@dataclass
class LoggingConfig:
    tensorboard_dir: Optional[str] = "runs/tensorboard"
    console_every: int = 1


@dataclass
class Config:
    algorithm: Literal["prime", "rloo", "grpo", "reinforce_pp"] = "prime"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    optim: OptimGroupConfig = field(default_factory=OptimGroupConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def uses_prm(self) -> bool:
        """Only PRIME trains an implicit PRM; the baselines use the outcome verifier alone."""
        return self.algorithm == "prime"


# ---------------------------------------------------------------- YAML parsing


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-7`` as a float (YAML 1.2); PyYAML 1.1 needs a dot."""


# Only forms the YAML 1.1 float/int resolvers (tried first) reject: an exponent without a dot.
_FLOAT_RE = r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_FLOAT_RE), list("-+0123456789."))


def _parse_scalar(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


# ---------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked against ``tp`` (int widens to float); raise naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
    elif origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
    elif origin is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp)
            return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, dotted + "."))
    return keys


def _closest_key(dotted: str) -> str | None:
    """Best guess for a wrong key: the same name in another section, a close sibling, or anything close."""
    valid = _all_keys(Config)
    section, _, leaf = dotted.rpartition(".")
    elsewhere = [k for k in valid if k.rpartition(".")[2] == leaf]
    if elsewhere:
        return elsewhere[0]
    siblings = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == section}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return siblings[close[0]]
    close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key_error(dotted: str, source: str) -> ConfigError:
    match = _closest_key(dotted)
    hint = f"; did you mean '{match}'?" if match else ""
    return ConfigError(f"unknown config key '{dotted}' in {source}{hint}")


def _merge(obj: Any, raw: dict, *, prefix: str, source: str) -> None:
    """Write the values of the mapping ``raw`` into the dataclass ``obj``, strictly."""
    hints = _field_types(type(obj))
    for name, value in raw.items():
        dotted = f"{prefix}{name}"
        if not isinstance(name, str) or name not in hints:
            raise _unknown_key_error(dotted, source)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}': expected a mapping (section), got {value!r} in {source}")
            _merge(getattr(obj, name), value, prefix=dotted + ".", source=source)
        else:
            try:
                setattr(obj, name, _coerce(value, tp, dotted))
            except ConfigError as err:
                raise ConfigError(f"{err} in {source}") from None


def _override_to_mapping(override: str) -> dict:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected the form a.b=value")
    dotted, text = override.split("=", 1)
    dotted = dotted.strip()
    if not dotted or any(not part for part in dotted.split(".")):
        raise ConfigError(f"override {override!r}: empty key component")
    try:
        value = _parse_scalar(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({err})") from None
    mapping: dict = {}
    node = mapping
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return mapping


# ---------------------------------------------------------------- validation


def _check(cond: bool, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': expected {expected}, got {value!r}")


def _validate(cfg: Config) -> None:
    """Range and cross-field checks that types alone cannot express."""
    r, f, u, d = cfg.rollout, cfg.filter, cfg.update, cfg.data
    for key in ("parallel.tp", "parallel.pp", "rollout.n", "rollout.max_prompt_len",
                "rollout.max_response_len", "rollout.sglang_tp", "reward.verifier.num_workers",
                "reward.verifier.code_max_cases", "update.micro_batch_size", "update.ppo_epochs",
                "update.ppo_mini_batches", "update.prm_mini_batches", "data.batch_size",
                "sft.epochs", "sft.batch_size", "sft.max_len", "trainer.total_steps",
                "checkpoint.keep_last", "logging.console_every"):
        value = _get(cfg, key)
        _check(value >= 1, key, "an integer >= 1", value)
    for key in ("trainer.eval_every", "trainer.eval_size", "checkpoint.save_every",
                "optim.policy.warmup_steps", "optim.prm.warmup_steps", "sft.warmup_steps"):
        value = _get(cfg, key)
        _check(value >= 0, key, "an integer >= 0", value)
    _check(r.temperature > 0, "rollout.temperature", "> 0", r.temperature)
    _check(cfg.trainer.eval_temperature >= 0, "trainer.eval_temperature", ">= 0 (0 is greedy)",
           cfg.trainer.eval_temperature)
    _check(0 < r.top_p <= 1, "rollout.top_p", "in (0, 1]", r.top_p)
    _check(0 < r.sglang_mem_fraction < 1, "rollout.sglang_mem_fraction", "in (0, 1)", r.sglang_mem_fraction)
    _check(cfg.reward.beta > 0, "reward.beta", "> 0", cfg.reward.beta)
    _check(0 <= cfg.reward.gamma <= 1, "reward.gamma", "in [0, 1]", cfg.reward.gamma)
    for key in ("reward.verifier.math_timeout_s", "reward.verifier.code_timeout_s"):
        _check(_get(cfg, key) > 0, key, "> 0", _get(cfg, key))
    _check(0 <= f.acc_low <= 1, "filter.acc_low", "in [0, 1]", f.acc_low)
    _check(0 <= f.acc_high <= 1, "filter.acc_high", "in [0, 1]", f.acc_high)
    _check(f.acc_low <= f.acc_high, "filter.acc_low", f"<= filter.acc_high ({f.acc_high})", f.acc_low)
    _check(u.clip_ratio > 0, "update.clip_ratio", "> 0", u.clip_ratio)
    _check(u.clip_ratio_high is None or u.clip_ratio_high > 0, "update.clip_ratio_high", "> 0 or null",
           u.clip_ratio_high)
    for role in ("policy", "prm"):
        _validate_optim(getattr(cfg.optim, role), f"optim.{role}")
    _check(cfg.sft.lr >= 0, "sft.lr", ">= 0", cfg.sft.lr)
    if cfg.algorithm in ("prime", "rloo", "grpo"):  # leave-one-out / group baselines need >= 2
        _check(r.n >= 2, "rollout.n", f"an integer >= 2 for algorithm '{cfg.algorithm}'", r.n)
    _check(d.batch_size * r.n >= u.ppo_mini_batches, "update.ppo_mini_batches",
           f"<= data.batch_size * rollout.n ({d.batch_size * r.n})", u.ppo_mini_batches)


def _validate_optim(opt: OptimConfig, key: str) -> None:
    _check(opt.lr >= 0, f"{key}.lr", ">= 0", opt.lr)
    _check(opt.weight_decay >= 0, f"{key}.weight_decay", ">= 0", opt.weight_decay)
    _check(opt.clip_grad > 0, f"{key}.clip_grad", "> 0", opt.clip_grad)
    _check(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas), f"{key}.betas",
           "two numbers in [0, 1)", opt.betas)


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------- public API


def config_from_dict(raw: dict, *, source: str = "<dict>", overrides: list[str] = ()) -> Config:
    """Build a validated Config from a mapping of non-default values plus dotted overrides."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    cfg = Config()
    _merge(cfg, raw, prefix="", source=source)
    for override in overrides:
        _merge(cfg, _override_to_mapping(override), prefix="", source=f"override {override!r}")
    try:
        _validate(cfg)
    except ConfigError as err:
        with_overrides = " with its overrides" if overrides else ""
        raise ConfigError(f"{err} (in {source}{with_overrides})") from None
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load ``path`` (YAML; None means all defaults), apply ``overrides`` (``a.b=value``), validate."""
    raw: Any = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config file {source}: {err.strerror}") from None
        try:
            raw = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {source} is not valid YAML: {err}") from None
        raw = {} if raw is None else raw
    return config_from_dict(raw, source=source, overrides=list(overrides))


def config_to_dict(cfg: Config) -> dict:
    """The fully resolved config as plain dicts/lists/scalars (for logging and checkpoints)."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
