#!/usr/bin/env bash
# Run MileBench: bootstraps .venv, then `python -m milebench.run` with every argument passed on.
#   bash scripts/eval.sh method=csp                          tiny model, generated data, 29 datasets
#   bash scripts/eval.sh model=llava-1.5-7b model.path=/ckpt/llava-1.5-7b-hf method=csp
#   NPROC=4 bash scripts/eval.sh method=csp                  4 processes (one GPU each, or CPU/gloo)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 MASTER_PORT=29500 NPROC=8 bash scripts/eval.sh ...
# Relative paths (data_dir, output_dir, model.path) are taken from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
NPROC="${NPROC:-1}"
NNODES="${NNODES:-1}"
if [[ "$NPROC" -le 1 && "$NNODES" -le 1 ]]; then
  exec .venv/bin/python -m milebench.run "$@"
fi
if [[ "$NNODES" -le 1 ]]; then
  rdzv=(--standalone)
else
  rdzv=(--nnodes="$NNODES" --node-rank="${NODE_RANK:?NODE_RANK is required with NNODES}"
        --master-addr="${MASTER_ADDR:?MASTER_ADDR is required with NNODES}" --master-port="${MASTER_PORT:-29500}")
fi
# One thread per process unless told otherwise: N processes on N cores, not N x N threads.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/torchrun "${rdzv[@]}" --nproc-per-node="$NPROC" -m milebench.run "$@"
