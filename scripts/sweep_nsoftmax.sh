#!/usr/bin/env bash
# The paper's Figure 4 ablation: CSP with n-softmax or softmax scores, with or without the
# cross/self decomposition (four runs): results/<model>/csp_b0.2,decompose=..,score_fn=../.
#   bash scripts/sweep_nsoftmax.sh budget=0.1 limit=50
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m milebench.run --multirun method=csp \
  method.score_fn=nsoftmax,softmax method.decompose=true,false "$@"
