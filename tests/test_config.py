"""Strict config loading: unknown keys, bad types, overrides, validation, and every example."""
from pathlib import Path

import pytest
import yaml

from prime_megatron.config import (Config, ConfigError, config_from_dict, config_to_dict, config_to_yaml,
                                   load_config)

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_round_trips(path):
    cfg = load_config(path)
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg
    assert path.read_text().startswith("#"), "each example starts with a header comment saying why it exists"


def test_the_four_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"prime_qwen25_math_7b.yaml", "prime_70b.yaml", "tiny_cpu.yaml",
                                          "rloo_tiny_cpu.yaml"}


def test_paper_hyperparameters_in_the_7b_example():
    # Cui et al. 2025, Sec. 4: 256 prompts x 4, lr 5e-7 / 1e-6, beta 0.05, 1024/3072, filter [0.2, 0.8].
    cfg = load_config(EXAMPLES[0].parent / "prime_qwen25_math_7b.yaml")
    assert (cfg.data.batch_size, cfg.rollout.n) == (256, 4)
    assert (cfg.optim.policy.lr, cfg.optim.prm.lr, cfg.reward.beta) == (5e-7, 1e-6, 0.05)
    assert (cfg.rollout.max_prompt_len, cfg.rollout.max_response_len) == (1024, 3072)
    assert (cfg.filter.acc_low, cfg.filter.acc_high, cfg.update.clip_ratio) == (0.2, 0.8, 0.2)
    assert cfg.algorithm == "prime" and cfg.update.kl_coef == 0.0 and cfg.reward.prm_loss == "ce"


def test_rloo_baseline_differs_from_tiny_only_in_algorithm_and_run_dirs():
    prime = config_to_dict(load_config(EXAMPLES[0].parent / "tiny_cpu.yaml"))
    rloo = config_to_dict(load_config(EXAMPLES[0].parent / "rloo_tiny_cpu.yaml"))
    for cfg in (prime, rloo):
        cfg.pop("checkpoint"), cfg["logging"].pop("tensorboard_dir")
    assert (prime.pop("algorithm"), rloo.pop("algorithm")) == ("prime", "rloo")
    assert prime == rloo


def test_unknown_key_names_dotted_key_file_and_suggestion(tmp_path):
    path = _write(tmp_path, "rollout:\n  temprature: 0.7\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "'rollout.temprature'" in msg and str(path) in msg and "did you mean 'rollout.temperature'" in msg


def test_misplaced_key_suggests_its_real_section(tmp_path):
    with pytest.raises(ConfigError, match=r"'rollout\.beta'.*did you mean 'reward\.beta'"):
        load_config(_write(tmp_path, "rollout:\n  beta: 0.1\n"))


def test_bad_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(ConfigError, match=r"'rollout\.n': expected int, got 'four'"):
        load_config(_write(tmp_path, 'rollout:\n  n: "four"\n'))
    with pytest.raises(ConfigError, match=r"'parallel\.tp': expected int, got True"):
        load_config(None, ["parallel.tp=true"])  # bool is not an int here
    with pytest.raises(ConfigError, match=r"'rollout\.engine': expected one of 'megatron', 'sglang'"):
        load_config(None, ["rollout.engine=vllm"])
    with pytest.raises(ConfigError, match=r"'rollout': expected a mapping"):
        load_config(_write(tmp_path, "rollout: 4\n"))


def test_overrides_use_yaml_scalar_rules():
    cfg = load_config(None, ["optim.policy.lr=1e-6", "rollout.temperature=1", "data.train_files=[a.parquet, b.jsonl]",
                             "model.prm_path=null", "filter.drop_truncated=true", "algorithm=rloo"])
    assert cfg.optim.policy.lr == 1e-6 and isinstance(cfg.optim.policy.lr, float)  # "1e-6" is a str in YAML 1.1
    assert cfg.rollout.temperature == 1.0 and isinstance(cfg.rollout.temperature, float)  # int widens to float
    assert cfg.data.train_files == ["a.parquet", "b.jsonl"]
    assert cfg.model.prm_path is None and cfg.filter.drop_truncated is True and cfg.algorithm == "rloo"


def test_overrides_apply_after_the_file_and_are_strict(tmp_path):
    path = _write(tmp_path, "rollout:\n  n: 8\n")
    assert load_config(path, ["rollout.n=6"]).rollout.n == 6
    with pytest.raises(ConfigError, match=r"'rollout\.nn'.*override.*did you mean 'rollout\.n'"):
        load_config(path, ["rollout.nn=6"])
    with pytest.raises(ConfigError, match="expected the form a.b=value"):
        load_config(path, ["rollout.n"])


def test_range_validation():
    with pytest.raises(ConfigError, match=r"'filter\.acc_low': expected <= filter\.acc_high"):
        load_config(None, ["filter.acc_low=0.9", "filter.acc_high=0.5"])
    with pytest.raises(ConfigError, match=r"'rollout\.n': expected an integer >= 2 for algorithm 'prime'"):
        load_config(None, ["rollout.n=1"])
    assert load_config(None, ["rollout.n=1", "algorithm=reinforce_pp"]).rollout.n == 1
    with pytest.raises(ConfigError, match=r"'rollout\.top_p'"):
        load_config(None, ["rollout.top_p=0"])
    with pytest.raises(ConfigError, match=r"'optim\.prm\.betas': expected two numbers"):
        load_config(None, ["optim.prm.betas=[0.9]"])


def test_defaults_and_derived_paths():
    cfg = load_config(None, ["model.policy_path=ckpt/sft"])
    assert cfg == Config(model=cfg.model)  # nothing but the override moved
    assert cfg.model.prm_init == cfg.model.ref_init == cfg.model.tokenizer_dir == "ckpt/sft"
    assert cfg.uses_prm and not load_config(None, ["algorithm=rloo"]).uses_prm
