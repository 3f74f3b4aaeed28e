#!/usr/bin/env bash
# CSP's cross ratio swept over 0, 0.1, 0.3, 0.5, 0.7, 0.9, 1 on every dataset (a fixed ratio
# replaces the per-dataset table), one run folder per ratio: results/<model>/csp_b0.2,cross_ratio=R/.
# The best ratio per dataset is then read from each folder's <D>/eval.json (eval_score.py).
#   bash scripts/sweep_cross_ratio.sh datasets=T-1 limit=50
#   bash scripts/sweep_cross_ratio.sh model=llava-1.5-7b model.path=... hydra/launcher=submitit_slurm \
#        hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m milebench.run --multirun method=csp \
  method.cross_ratio=0,0.1,0.3,0.5,0.7,0.9,1 "$@"
