#!/usr/bin/env bash
# One command for a newcomer: install into .venv, then a real PRIME run on CPU with the tiny
# example (supervised warm-up, then PRIME; held-out accuracy is printed every eval_every steps).
# Extra arguments are passed to `prime-megatron train` as dotted overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ ! -f runs/tiny/sft/metadata.json ]; then
  .venv/bin/prime-megatron sft --config examples/tiny_cpu.yaml
fi
.venv/bin/prime-megatron train --config examples/tiny_cpu.yaml "$@"
echo "TensorBoard logs: runs/tiny/tensorboard  (tensorboard --logdir runs/tiny/tensorboard)"
