"""The PRIME loop (Cui et al. 2025, arXiv 2502.01456, Algorithm 1), one step per iteration:

  1-3. rollout K samples per prompt, verify, filter by accuracy (collect.py)
  4.   reference (and old-policy) log-probs
  5.   implicit PRM update on outcome labels; process rewards beta*(log pi_phi - log pi_ref)
  6.   advantages (RLOO on process + outcome rewards, Eq. 5)
  7.   PPO policy update
  8.   weight sync to the rollout engine

`algorithm: rloo` skips 4-5 (outcome-only RLOO, the paper's baseline). Run it as
`prime-megatron train --config X.yaml [a.b=v ...]` or `torchrun -m prime_megatron.train ...`.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager

import torch

from prime_megatron import components as C
from prime_megatron.checkpoint.train_state import latest_checkpoint, load_train_checkpoint, save_train_checkpoint
from prime_megatron.collect import BatchCollector, build_rollout_batch, groups_from_state, groups_to_state
from prime_megatron.config import load_config
from prime_megatron.data.stream import PromptStream
from prime_megatron.evaluate import compute_heldout_accuracy
from prime_megatron.metrics import MetricsLogger, compute_masked_stats
from prime_megatron.parallel import destroy_parallel, init_parallel
from prime_megatron.preemption import StopRequest
from prime_megatron.reward.implicit import compute_implicit_rewards
from prime_megatron.step import compute_step_advantages, forward_logprobs, update_policy, update_prm

CONSOLE_KEYS = ["rollout/accuracy_before_filter", "rollout/accuracy_after_filter", "eval/accuracy", "prm/loss",
                "prm/ranking_accuracy", "policy/loss", "policy/clip_fraction", "policy/approx_kl", "time/step"]


class Run:
    """Everything one training run holds; built once, checkpointed by `trainer_state()`."""

    def __init__(self, cfg, parallel):
        self.cfg, self.parallel = cfg, parallel
        self.tokenizer = C.load_tokenizer(cfg.model.tokenizer_dir)
        self.arch = C.resolve_arch(cfg.model.policy_path)
        opt = cfg.optim
        self.policy, self.policy_opt = C.build_trainable(
            self.arch, cfg.model.policy_path, parallel=parallel, lr=opt.policy.lr, betas=opt.policy.betas,
            weight_decay=opt.policy.weight_decay, clip_grad=opt.policy.clip_grad, bf16=cfg.model.bf16)
        self.models, self.optimizers = {"policy": self.policy}, {"policy": self.policy_opt}
        if cfg.uses_prm:
            self.prm, self.prm_opt = C.build_trainable(
                self.arch, cfg.model.prm_init, parallel=parallel, lr=opt.prm.lr, betas=opt.prm.betas,
                weight_decay=opt.prm.weight_decay, clip_grad=opt.prm.clip_grad, bf16=cfg.model.bf16)
            self.models["prm"], self.optimizers["prm"] = self.prm, self.prm_opt
        self.ref = C.build_frozen(self.arch, cfg.model.ref_init, parallel=parallel, bf16=cfg.model.bf16,
                                  offload=cfg.model.ref_on_cpu) if cfg.uses_prm or cfg.update.kl_coef else None
        self.engine = C.build_engine(cfg, self.policy, parallel=parallel, arch=self.arch)
        self.scorer = C.build_scorer(cfg, self.tokenizer) if parallel.rank == 0 else None
        train = C.load_prompts(cfg.data.train_files, self.tokenizer, cfg)
        self.val = C.load_prompts(cfg.data.val_files, self.tokenizer, cfg).prompts if cfg.data.val_files else []
        if cfg.trainer.eval_size:
            self.val = self.val[:cfg.trainer.eval_size]
        stream = PromptStream(train.prompts, batch_size=cfg.data.batch_size, seed=cfg.data.shuffle_seed,
                              shuffle=cfg.data.shuffle)
        self.collector = BatchCollector(
            stream, self.engine, self.scorer, C.sampling_params(cfg, self.tokenizer, seed=cfg.trainer.seed),
            batch_prompts=cfg.data.batch_size, filter_enabled=cfg.filter.enabled, acc_low=cfg.filter.acc_low,
            acc_high=cfg.filter.acc_high, drop_truncated=cfg.filter.drop_truncated)
        self.step = 0

    def trainer_state(self) -> dict:
        return {"stream": self.collector.stream.state_dict(), "rounds": self.collector.rounds,
                "buffer": groups_to_state(self.collector.buffer)}

    def restore(self, state: dict) -> None:
        self.step = state["step"]
        self.collector.stream.load_state_dict(state["stream"])
        self.collector.rounds = state["rounds"]
        self.collector.buffer = groups_from_state(state["buffer"])


@contextmanager
def timed(metrics: dict, phase: str):
    start = time.perf_counter()
    yield
    metrics[f"time/{phase}"] = time.perf_counter() - start


def train_step(run: Run) -> dict[str, float]:
    cfg, parallel = run.cfg, run.parallel
    fwd = dict(parallel=parallel, micro_batch_size=cfg.update.micro_batch_size, logprob_impl=cfg.update.logprob_impl)
    metrics: dict[str, float] = {}
    for name, opt in run.optimizers.items():
        metrics[f"{name}/lr"] = C.set_lr(opt, getattr(cfg.optim, name).lr, run.step, getattr(cfg.optim, name).warmup_steps)
    with timed(metrics, "rollout"):
        run.engine.wake()
        groups, rollout_metrics = run.collector.next_batch()
        run.engine.sleep()
    metrics.update(rollout_metrics)
    if not groups:  # every drawn prompt was filtered out: nothing to learn from this step
        return metrics
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    batch = build_rollout_batch(groups, pad_id=run.tokenizer.pad_token_id or 0).to(device)
    with timed(metrics, "old_logprobs"):
        old = forward_logprobs(run.policy, batch, **fwd)
    metrics["rollout/sampler_trainer_logprob_gap"] = float(
        ((old - batch.sampler_logprobs).abs() * batch.response_mask).sum() / batch.response_mask.sum())
    ref = process = None
    if run.ref is not None:
        with timed(metrics, "ref_logprobs"):
            with C.resident(run.ref, offload=cfg.model.ref_on_cpu):
                ref = forward_logprobs(run.ref, batch, **fwd)
    if cfg.uses_prm:
        with timed(metrics, "prm_update"):
            prm_logprobs, prm_metrics = update_prm(run.prm, run.prm_opt, batch, ref, reward_cfg=cfg.reward,
                                                   update_cfg=cfg.update, parallel=parallel)
        process = compute_implicit_rewards(prm_logprobs, ref, batch.response_mask, beta=cfg.reward.beta,
                                           granularity=cfg.reward.granularity)
        metrics.update(prm_metrics)
        metrics.update(compute_masked_stats("reward/implicit", process, batch.response_mask))
    advantages = compute_step_advantages(cfg.algorithm, batch, process, reward_cfg=cfg.reward)
    metrics.update(compute_masked_stats("advantage", advantages, batch.response_mask))
    with timed(metrics, "policy_update"):
        metrics.update(update_policy(run.policy, run.policy_opt, batch, old, advantages, update_cfg=cfg.update,
                                     parallel=parallel, ref_logprobs=ref))
    with timed(metrics, "weight_sync"):
        _sync_weights(run)
    metrics["rollout/tokens"] = float(batch.sequences.response_lengths.sum())
    return metrics


def _sync_weights(run: Run) -> None:
    """The megatron-native engine samples from the policy itself; external engines get HF tensors."""
    if run.cfg.rollout.engine == "megatron":
        return
    from prime_megatron.weight_sync.gather import iter_hf_tensors

    run.engine.update_weights(iter_hf_tensors(run.policy, parallel=run.parallel, arch=run.arch))


def train(cfg, *, resume: bool = False) -> None:
    parallel = init_parallel(tp=cfg.parallel.tp, pp=cfg.parallel.pp, seed=cfg.trainer.seed)
    stop = StopRequest()
    run = Run(cfg, parallel)
    latest = latest_checkpoint(cfg.checkpoint.dir) if resume else None
    if latest is not None:
        run.restore(load_train_checkpoint(latest, models=run.models, optimizers=run.optimizers, parallel=parallel))
    logger = MetricsLogger(cfg.logging.tensorboard_dir or cfg.checkpoint.dir, enabled=parallel.rank == 0,
                           console_every=cfg.logging.console_every)
    if parallel.rank == 0:
        print(f"prime-megatron: {cfg.algorithm} tp={parallel.tp} pp={parallel.pp} dp={parallel.dp}, "
              f"{'resuming at step ' + str(run.step) if latest else 'starting'}", flush=True)
    _sync_weights(run)  # an external engine starts with placeholder weights
    if run.val and cfg.trainer.eval_every and run.step == 0:
        logger.log(0, {"eval/accuracy": evaluate(run)})  # the starting point of the learning curve
    from tqdm import tqdm

    for step in tqdm(range(run.step, cfg.trainer.total_steps), disable=parallel.rank != 0, desc="train",
                     initial=run.step, total=cfg.trainer.total_steps):
        start = time.perf_counter()
        metrics = train_step(run)
        run.step = step + 1
        if run.val and cfg.trainer.eval_every and run.step % cfg.trainer.eval_every == 0:
            metrics["eval/accuracy"] = evaluate(run)
        metrics["time/step"] = time.perf_counter() - start
        logger.log(run.step, metrics)
        logger.console(run.step, metrics, CONSOLE_KEYS)
        stopping = stop.agreed()
        if stopping or run.step == cfg.trainer.total_steps or (
                cfg.checkpoint.save_every and run.step % cfg.checkpoint.save_every == 0):
            save_train_checkpoint(cfg.checkpoint.dir, run.step, models=run.models, optimizers=run.optimizers,
                                  trainer_state=run.trainer_state(), parallel=parallel, keep_last=cfg.checkpoint.keep_last)
        if stopping:
            if parallel.rank == 0:
                print(f"prime-megatron: stop requested; checkpoint saved at step {run.step}", flush=True)
            break
    logger.close()
    if run.scorer is not None:
        run.scorer.manager.close()
    destroy_parallel()


def evaluate(run: Run) -> float:
    params = C.sampling_params(run.cfg, run.tokenizer, temperature=run.cfg.trainer.eval_temperature, n=1,
                               seed=run.cfg.trainer.seed)
    run.engine.wake()  # a colocated engine sleeps while the models train
    try:
        return compute_heldout_accuracy(run.engine, run.val, run.scorer, params)
    finally:
        run.engine.sleep()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prime-megatron train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML (see examples/)")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.dir/latest if it exists")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=8")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    train(load_config(args.config, args.overrides), resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
