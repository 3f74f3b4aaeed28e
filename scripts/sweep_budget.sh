#!/usr/bin/env bash
# Every KV-pruning method at budgets 0.1, 0.2, 0.3 and 0.6 of the prompt (the paper's Figure 5),
# plus the full cache once, as a Hydra multirun: results/<model>/<method>_b<budget>/.
#   bash scripts/sweep_budget.sh limit=20
#   bash scripts/sweep_budget.sh hydra/launcher=submitit_slurm hydra.launcher.gpus_per_node=1 ...
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
methods=$(ls configs/method/*.yaml | xargs -n1 basename | sed 's/\.yaml$//' | grep -vx full | paste -sd, -)
.venv/bin/python -m milebench.run method=full "$@"
exec .venv/bin/python -m milebench.run --multirun "method=$methods" budget=0.1,0.2,0.3,0.6 "$@"
