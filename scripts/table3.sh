#!/usr/bin/env bash
# The paper's Table 3 for one backbone: the full cache, then H2O, SnapKV, ReCo, LOOK-M
# (TP+P-Merge, the row the paper's single LOOK-M is compared with) and CSP at the paper's budget
# on T-2, T-4, S-4 and IR; then the tables (results/table3.md) with the published rows beside.
#   bash scripts/table3.sh model=mobilevlm-v2-3b data_dir=data/MileBench
#   bash scripts/table3.sh model=internvl-chat-1.0 data_dir=data/MileBench
#   bash scripts/table3.sh model=tiny-mobilevlm limit=2       # offline, on the tiny twin
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
datasets="datasets=[T-2,T-4,S-4,IR]"
.venv/bin/python -m milebench.run method=full "$datasets" "$@"
.venv/bin/python -m milebench.run --multirun method=h2o,snapkv,reco,lookm-tp-p,csp "$datasets" "$@"
results=results
for arg in "$@"; do
  case "$arg" in output_dir=*) results="${arg#output_dir=}" ;; esac
done
exec .venv/bin/python eval_score.py --results "$results"
