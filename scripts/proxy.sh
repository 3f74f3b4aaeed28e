#!/usr/bin/env bash
# The proxy study: every registered KV-pruning method at budgets 0.05, 0.1, 0.2, 0.5 and 1.0
# (plus the full cache) on the proxy task set, with the trained proxy LLaVA, through the
# unchanged runner, methods and scorer; then the proxy table and the score-vs-budget figures.
#   bash scripts/proxy.sh                       # results/proxy/proxy-llava/
#   PROXY_SEED=1 bash scripts/proxy.sh          # the second training seed: results/proxy/proxy-llava-seed1/
#   PROXY_BUDGETS="0.1 0.2" bash scripts/proxy.sh limit=20
# Builds what is missing first (the proxy data, the trained model: about 3 minutes). Budget b
# keeps b of the prompt, half of it the most recent tokens (recent_ratio = b / 2, the
# reference's 0.1 + 0.1 at 0.2). The methods run as two Hydra multiruns side by side, one
# thread each (two cores). Extra arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
PY=.venv/bin/python
DATA=${PROXY_DATA:-data/milebench-proxy}
OUT=${PROXY_RESULTS:-results/proxy}
SEED=${PROXY_SEED:-0}
BUDGETS=${PROXY_BUDGETS:-"0.05 0.1 0.2 0.5 1.0"}
NAME=proxy-llava
[ "$SEED" = 0 ] || NAME=proxy-llava-seed$SEED
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HYDRA_FULL_ERROR=1
start=$(date +%s)

$PY -m milebench.proxy --out "$DATA"
$PY -m standins.proxy_llava ensure --seed "$SEED"

common=(model=proxy-llava "model.seed=$SEED" "model.name=$NAME" "data_dir=$DATA" "output_dir=$OUT"
        hydra.sweep.dir="multirun/proxy/$NAME" "$@")
mapfile -t methods < <($PY -c "from csp.engine.registry import method_names; print('\n'.join(m for m in method_names() if m != 'full'))")
half=$(( (${#methods[@]} + 1) / 2 ))
first=$(IFS=,; echo "${methods[*]:0:$half}")
second=$(IFS=,; echo "${methods[*]:$half}")
echo "proxy study: ${#methods[@]} methods x budgets {$BUDGETS} + full, model $NAME"

logs="$OUT/logs/$NAME"
mkdir -p "$logs"
$PY -m milebench.run method=full "${common[@]}" hydra.run.dir="outputs/proxy/$NAME/full" >"$logs/full.log" 2>&1
for b in $BUDGETS; do
  r=$($PY -c "print(f'{$b / 2:g}')")
  pids=()
  for group in "$first" "$second"; do
    [ -n "$group" ] || continue
    # at budget 1 every method keeps the whole prompt: the fidelity pass would only say KL 0
    fid=true; [ "$b" = 1.0 ] || [ "$b" = 1 ] && fid=false
    $PY -m milebench.run --multirun "method=$group" "budget=$b" "recent_ratio=$r" "${common[@]}" "fidelity=$fid" \
      hydra.sweep.subdir="b$b-\${hydra.job.num}" >"$logs/b$b-${group%%,*}.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || { echo "a run at budget $b failed; see $logs/" >&2; exit 1; }
  done
  echo "budget $b done ($(( $(date +%s) - start )) s)"
done

$PY eval_score.py --results "$OUT" >/dev/null
$PY scripts/proxy_report.py --results "$OUT" --model "$NAME"
echo "proxy study done in $(( $(date +%s) - start )) s"
