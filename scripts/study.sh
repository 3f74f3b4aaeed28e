#!/usr/bin/env bash
# The budget study: every registered KV-pruning method at budgets 0.05, 0.1, 0.2 and 0.5 (plus
# the full cache) on the learnable MileBench (all 29 datasets) with the trained LLaVA stand-in,
# through the unchanged runner, methods and scorer; then the study's table and figures.
#   bash scripts/study.sh                        # results/study/standin-llava/
#   STUDY_SEED=1 bash scripts/study.sh           # the second training seed: results/study/standin-llava-seed1/
#   STUDY_BUDGETS="0.1 0.2" bash scripts/study.sh limit=6
# Builds what is missing first (the data, the trained model: about thirteen minutes). Budget b keeps
# b of the prompt, half of it the most recent tokens (recent_ratio = b / 2, the reference's
# 0.1 + 0.1 at 0.2). The methods run as two Hydra multiruns side by side, one thread each (two
# cores); every run resumes what it already has. Extra arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
PY=.venv/bin/python
DATA=${STUDY_DATA:-data/milebench-learnable}
OUT=${STUDY_RESULTS:-results/study}
SEED=${STUDY_SEED:-0}
BUDGETS=${STUDY_BUDGETS:-"0.05 0.1 0.2 0.5"}
NAME=standin-llava
[ "$SEED" = 0 ] || NAME=standin-llava-seed$SEED
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HYDRA_FULL_ERROR=1
start=$(date +%s)

$PY -m milebench.learnable --out "$DATA"
OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $PY -m standins.llava_standin ensure --seed "$SEED"

common=(model=standin-llava "model.seed=$SEED" "model.name=$NAME" "data_dir=$DATA" "output_dir=$OUT"
        hydra.sweep.dir="multirun/study/$NAME" "$@")
mapfile -t methods < <($PY -c "from csp.engine.registry import method_names; print('\n'.join(m for m in method_names() if m != 'full'))")
half=$(( (${#methods[@]} + 1) / 2 ))
first=$(IFS=,; echo "${methods[*]:0:$half}")
second=$(IFS=,; echo "${methods[*]:$half}")
echo "budget study: ${#methods[@]} methods x budgets {$BUDGETS} + full, model $NAME"

logs="$OUT/logs/$NAME"
mkdir -p "$logs"
$PY -m milebench.run method=full "${common[@]}" hydra.run.dir="outputs/study/$NAME/full" >"$logs/full.log" 2>&1
for b in $BUDGETS; do
  r=$($PY -c "print(f'{$b / 2:g}')")
  pids=()
  for group in "$first" "$second"; do
    [ -n "$group" ] || continue
    $PY -m milebench.run --multirun "method=$group" "budget=$b" "recent_ratio=$r" "${common[@]}" fidelity=true \
      hydra.sweep.subdir="b$b-\${hydra.job.num}" >"$logs/b$b-${group%%,*}.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || { echo "a run at budget $b failed; see $logs/" >&2; exit 1; }
  done
  echo "budget $b done ($(( $(date +%s) - start )) s)"
done

$PY eval_score.py --results "$OUT" >/dev/null
$PY scripts/study_report.py --results "$OUT" --model "$NAME"
echo "budget study done in $(( $(date +%s) - start )) s"
