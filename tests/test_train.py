"""The trainer end to end on the tiny example: invariants at step 0, a TP=2 run, exact resume.

A small SFT run (4 optimizer steps) makes the starting checkpoint, so these tests also run
`prime-megatron sft`. The filter is off so that every step trains whatever the tiny model's
accuracy; the filter itself is tested in tests/reward/test_filter.py.
"""
import json
from pathlib import Path

import pytest
import yaml

from tests.distributed import run_distributed

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny"


def _write_config(tmp: Path, **sections) -> Path:
    cfg = {
        "model": {"policy_path": str(tmp / "sft"), "tokenizer_path": str(TINY)},
        "rollout": {"n": 4, "max_prompt_len": 32, "max_response_len": 12},
        "reward": {"verifier": {"num_workers": 1}},
        "filter": {"enabled": False},
        "update": {"micro_batch_size": 4},
        "optim": {"policy": {"lr": 1.0e-4}, "prm": {"lr": 1.0e-4}},
        "data": {"train_files": [str(TINY / "train.jsonl")], "val_files": [str(TINY / "val.jsonl")], "batch_size": 2},
        "sft": {"train_files": [str(tmp / "sft.jsonl")], "init_path": str(TINY), "output_dir": str(tmp / "sft"),
                "epochs": 1, "batch_size": 16, "lr": 1.0e-3, "max_len": 80},
        "trainer": {"total_steps": 2, "seed": 3, "eval_every": 0, "eval_size": 4},
        "checkpoint": {"dir": str(tmp / "ckpt"), "save_every": 0},
        "logging": {"tensorboard_dir": str(tmp / "tb")},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _sft(rank, world_size, config_path):
    from prime_megatron.config import load_config
    from prime_megatron.sft import sft

    return sft(load_config(config_path, []))


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    lines = (TINY / "sft.jsonl").read_text().splitlines()[:64]
    (tmp / "sft.jsonl").write_text("\n".join(lines) + "\n")
    accuracy = run_distributed(_sft, 1, (str(_write_config(tmp)),), timeout_s=300)[0]
    assert 0.0 <= accuracy <= 1.0
    assert (tmp / "sft" / "metadata.json").is_file() and (tmp / "sft" / "hf_config" / "config.json").is_file()
    return tmp / "sft"


def _step_zero_invariants(rank, world_size, config_path):
    """At step 0 policy == reference == PRM: equal log-probs, zero implicit rewards, PPO ratio 1."""
    from prime_megatron import components as C
    from prime_megatron.collect import build_rollout_batch
    from prime_megatron.config import load_config
    from prime_megatron.parallel import init_parallel
    from prime_megatron.reward.implicit import compute_implicit_rewards
    from prime_megatron.step import compute_step_advantages, forward_logprobs, update_policy, update_prm
    from prime_megatron.train import Run

    cfg = load_config(config_path, [])
    parallel = init_parallel(tp=cfg.parallel.tp, pp=cfg.parallel.pp, seed=cfg.trainer.seed)
    run = Run(cfg, parallel)
    groups, _ = run.collector.next_batch()
    batch = build_rollout_batch(groups, pad_id=run.tokenizer.pad_token_id)
    mbs = cfg.update.micro_batch_size
    old = forward_logprobs(run.policy, batch, parallel=parallel, micro_batch_size=mbs)
    with C.resident(run.ref, offload=cfg.model.ref_on_cpu):
        ref = forward_logprobs(run.ref, batch, parallel=parallel, micro_batch_size=mbs)
    prm_logprobs, _ = update_prm(run.prm, run.prm_opt, batch, ref, reward_cfg=cfg.reward, update_cfg=cfg.update,
                                 parallel=parallel)
    rewards = compute_implicit_rewards(prm_logprobs, ref, batch.response_mask, beta=cfg.reward.beta)
    advantages = compute_step_advantages("prime", batch, rewards, reward_cfg=cfg.reward)
    policy_metrics = update_policy(run.policy, run.policy_opt, batch, old, advantages, update_cfg=cfg.update,
                                   parallel=parallel)
    prm_after = forward_logprobs(run.prm, batch, parallel=parallel, micro_batch_size=mbs)
    mask = batch.response_mask.bool()
    return {
        "policy_vs_ref": float((old - ref).abs().max()),
        "max_abs_reward": float(rewards.abs().max()),
        "sampler_gap": float((old - batch.sampler_logprobs)[mask].abs().max()),
        "approx_kl": policy_metrics["policy/approx_kl"],
        "clip_fraction": policy_metrics["policy/clip_fraction"],
        "prm_moved": float((prm_after - ref)[mask].abs().max()),
        "rows": batch.sequences.batch_size,
    }


def test_step_zero_invariants_at_tp2(sft_dir, tmp_path):
    # ref_on_cpu exercises the reference's offload path (a move to host memory and back).
    config = _write_config(tmp_path, model={"policy_path": str(sft_dir), "ref_on_cpu": True}, parallel={"tp": 2})
    results = run_distributed(_step_zero_invariants, 2, (str(config),), timeout_s=400)
    for r in results:
        assert r["rows"] == 2 * 4
        # The reference is loaded from the same checkpoint and runs the same forward: bitwise equal.
        assert r["policy_vs_ref"] == 0.0
        # The PRM starts as the reference and "after" mode scores with the pre-update forward, so
        # beta * (log pi_phi - log pi_ref) is 0 up to reduction-order noise of a backward-enabled pass.
        assert r["max_abs_reward"] < 1e-6
        # First PPO pass of the step: logprobs == old_logprobs, ratio 1, nothing clipped.
        assert abs(r["approx_kl"]) < 1e-6 and r["clip_fraction"] == 0.0
        # Sampler (KV-cached incremental forward) vs trainer (full forward) log-probs: fp32
        # summation-order differences only; 1e-4 nats is far below any real policy change.
        assert r["sampler_gap"] < 1e-4
        # The PRM update did something: with z = 0 the CE gradient is sigmoid(0) - r_o = +-0.5 per
        # sequence, so the comparisons above could not pass merely because nothing ran.
        assert r["prm_moved"] > 1e-6
    assert results[0] == results[1]


def _train(rank, world_size, config_path, overrides, resume):
    from prime_megatron.config import load_config
    from prime_megatron.train import train

    train(load_config(config_path, overrides), resume=resume)


def _losses(tb_dir: Path) -> dict[int, tuple]:
    rows = [json.loads(line) for line in (tb_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["policy/loss"], r["prm/loss"], r["rollout/accuracy_before_filter"]) for r in rows}


def test_two_steps_at_tp2_write_a_checkpoint(sft_dir, tmp_path):
    config = _write_config(tmp_path, model={"policy_path": str(sft_dir)}, parallel={"tp": 2})
    run_distributed(_train, 2, (str(config), [], False), timeout_s=400)
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_00000002"
    state = json.loads((tmp_path / "ckpt" / "step_00000002" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["stream"]["position"] == 4  # 2 steps x 2 prompts
    assert sorted(_losses(tmp_path / "tb")) == [1, 2]


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(sft_dir, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = _write_config(tmp_path / "a", model={"policy_path": str(sft_dir)}, trainer={"total_steps": 4})
    run_distributed(_train, 1, (str(straight), [], False), timeout_s=400)
    split = _write_config(tmp_path / "b", model={"policy_path": str(sft_dir)}, trainer={"total_steps": 4},
                          checkpoint={"save_every": 2})
    run_distributed(_train, 1, (str(split), ["trainer.total_steps=2"], False), timeout_s=400)
    run_distributed(_train, 1, (str(split), [], True), timeout_s=400)
    expected, resumed = _losses(tmp_path / "a" / "tb"), _losses(tmp_path / "b" / "tb")
    assert sorted(expected) == [1, 2, 3, 4] and sorted(resumed) == [1, 2, 3, 4]
    # Same seed, same CPU kernels, state restored bit for bit: identical numbers, not merely close.
    for step in (3, 4):
        assert resumed[step] == expected[step], step
