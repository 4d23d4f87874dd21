#!/bin/bash
# PRIME on Qwen2.5-Math-7B, the paper's setting: one node of 8 x A100-80GB.
# The layout (tp/pp, SGLang share) lives in the YAML; tools/plan.py checks that it fits.
#   sbatch slurm/prime_7b.sh [a.b=value ...]        CONFIG=my.yaml sbatch slurm/prime_7b.sh
# Env: CONFIG, OVERRIDES (space-separated), NPROC, PYTHON, CONTAINER_IMAGE (pyxis), LOG_DIR,
# MODULE (default prime_megatron.train).
# Preemption: 10 min before the time limit the batch shell gets USR1, forwards it to the
# trainer (which checkpoints and exits) and requeues the job; every run passes --resume.
#SBATCH --job-name=prime-7b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
set -uo pipefail
CONFIG=${CONFIG:-examples/prime_qwen25_math_7b.yaml}
NPROC=${NPROC:-${SLURM_GPUS_ON_NODE:-8}}
LOG_DIR=${LOG_DIR:-logs}/$SLURM_JOB_ID
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
mkdir -p "$LOG_DIR"
export OMP_NUM_THREADS=8
# torchrun (read as --signals-to-handle/--shutdown-timeout) forwards USR1 to its workers
# instead of dying of it, and gives them this many seconds to write the checkpoint.
export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 PET_SHUTDOWN_TIMEOUT=540
CONTAINER=()
if [ -n "${CONTAINER_IMAGE:-}" ] && srun --help 2>&1 | grep -q -- --container-image; then
  CONTAINER=(--container-image="$CONTAINER_IMAGE" --container-workdir="$PWD" --container-mounts="$PWD:$PWD")
fi
preempted=0
trap 'preempted=1; scancel --signal=USR1 "$SLURM_JOB_ID"' USR1
# shellcheck disable=SC2086  # OVERRIDES is a space-separated list by design
srun "${CONTAINER[@]}" --kill-on-bad-exit=1 ${PYTHON:-python} -m torch.distributed.run \
  --nnodes="$SLURM_NNODES" --nproc-per-node="$NPROC" --rdzv-backend=c10d \
  --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="$SLURM_JOB_ID" --log-dir="$LOG_DIR" --tee=3 \
  -m "${MODULE:-prime_megatron.train}" --config "$CONFIG" --resume ${OVERRIDES:-} "$@" &
pid=$!
# A trapped USR1 interrupts `wait`; keep waiting until srun itself has exited.
while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
if [ "$preempted" = 1 ]; then scontrol requeue "$SLURM_JOB_ID"; fi
exit "$rc"
