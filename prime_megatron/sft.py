"""Supervised warm-up: maximise the log-likelihood of reference responses given their prompts.

`prime-megatron sft --config X.yaml` trains the policy architecture from `sft.init_path` (an
HF config directory: random init; or a megatron checkpoint: continue) on `sft.train_files`
and writes a megatron checkpoint to `sft.output_dir`, with the HF config and tokenizer in
its `hf_config/`, ready to be `model.policy_path` of the RL run. It reuses the RL update
path (update/forward_backward.py): the loss is minus the token-mean response log-prob.

Left out: packing, loss on prompt tokens, and multi-turn data.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from prime_megatron import components as C
from prime_megatron.checkpoint.convert import HF_CONFIG_SUBDIR
from prime_megatron.checkpoint.megatron_io import EXTRA_KEY, MODEL_KEY, save_sharded
from prime_megatron.models.builder import unwrap_model
from prime_megatron.config import load_config
from prime_megatron.data.sft import load_sft_examples
from prime_megatron.evaluate import compute_heldout_accuracy
from prime_megatron.parallel import destroy_parallel, init_parallel
from prime_megatron.update.batch import SequenceBatch
from prime_megatron.update.forward_backward import train_on_batch


def make_sft_batch(examples, *, pad_id: int) -> SequenceBatch:
    width = max(len(e.prompt_ids) + len(e.response_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    for row, e in enumerate(examples):
        seq = list(e.prompt_ids) + list(e.response_ids)
        ids[row, :len(seq)] = torch.tensor(seq)
    return SequenceBatch(ids, torch.tensor([len(e.prompt_ids) for e in examples]),
                         torch.tensor([len(e.response_ids) for e in examples]))


def nll_loss_fn(batch: SequenceBatch):
    """Token-mean negative log-likelihood over the whole batch, summed across micro-batches."""
    mask = batch.response_mask()
    total_tokens = float(mask.sum())

    def loss_fn(logprobs, entropy, index):
        m = mask[index, :logprobs.shape[1]]
        return -(logprobs * m).sum() / total_tokens, {}
    return loss_fn


def save_sft_model(model, out_dir: str, hf_source: Path, tokenizer_dir: Path, *, parallel) -> None:
    def finalize(tmp: Path) -> None:
        side = tmp / HF_CONFIG_SUBDIR
        side.mkdir()
        shutil.copy2(hf_source / "config.json", side / "config.json")
        for item in tokenizer_dir.iterdir():
            if item.is_file() and ("token" in item.name or item.name.endswith((".model", ".txt"))):
                shutil.copy2(item, side / item.name)

    state = {MODEL_KEY: unwrap_model(model).sharded_state_dict(), EXTRA_KEY: {"source": "prime-megatron sft"}}
    save_sharded(state, out_dir, rank=parallel.rank, finalize=finalize)


def sft(cfg) -> float | None:
    """Run the warm-up; returns the held-out accuracy after it (None without val files)."""
    parallel = init_parallel(tp=cfg.parallel.tp, pp=cfg.parallel.pp, seed=cfg.trainer.seed)
    s = cfg.sft
    tokenizer_dir = C.hf_files_dir(cfg.model.tokenizer_path or s.init_path)
    tokenizer = C.load_tokenizer(str(tokenizer_dir))
    arch = C.resolve_arch(s.init_path)
    init = s.init_path if (Path(s.init_path) / "metadata.json").is_file() else None
    model, optimizer = C.build_trainable(arch, init, parallel=parallel, lr=s.lr, weight_decay=0.0, clip_grad=1.0)
    examples, skipped = load_sft_examples(s.train_files, tokenizer, max_len=s.max_len)
    rng = np.random.default_rng(cfg.trainer.seed)
    steps_per_epoch = len(examples) // s.batch_size
    from tqdm import tqdm

    bar = tqdm(total=s.epochs * steps_per_epoch, desc="sft", disable=parallel.rank != 0)
    step = 0
    for _ in range(s.epochs):
        order = rng.permutation(len(examples))
        for start in range(0, steps_per_epoch * s.batch_size, s.batch_size):
            batch = make_sft_batch([examples[i] for i in order[start:start + s.batch_size]],
                                   pad_id=tokenizer.pad_token_id or 0)
            C.set_lr(optimizer, s.lr, step, s.warmup_steps)
            result = train_on_batch(model, optimizer, batch, nll_loss_fn(batch), parallel=parallel,
                                    micro_batch_size=cfg.update.micro_batch_size,
                                    logprob_impl=cfg.update.logprob_impl)
            step += 1
            bar.update(1)
            bar.set_postfix(nll=f"{result['loss']:.3f}")
    bar.close()
    save_sft_model(model, s.output_dir, C.hf_files_dir(s.init_path), tokenizer_dir, parallel=parallel)
    accuracy = None
    if cfg.data.val_files:
        scorer = C.build_scorer(cfg, tokenizer) if parallel.rank == 0 else None
        val = C.load_prompts(cfg.data.val_files, tokenizer, cfg).prompts
        val = val[:cfg.trainer.eval_size] if cfg.trainer.eval_size else val
        engine = C.build_engine(cfg, model, parallel=parallel, arch=arch)
        params = C.sampling_params(cfg, tokenizer, temperature=cfg.trainer.eval_temperature, n=1)
        accuracy = compute_heldout_accuracy(engine, val, scorer, params)
        if scorer is not None:
            scorer.manager.close()
    if parallel.rank == 0:
        print(f"sft: {step} steps on {len(examples)} examples ({skipped} too long, skipped); "
              f"saved {s.output_dir}" + (f"; held-out accuracy {accuracy:.3f}" if accuracy is not None else ""),
              flush=True)
    destroy_parallel()
    return accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prime-megatron sft", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    sft(load_config(args.config, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
