#!/usr/bin/env bash
# Make .venv and install the requirements. Idempotent: when requirements.txt and this
# script are unchanged since the last successful run it returns at once.
#   WITH_FLASH_ATTN=1 bash scripts/setup.sh   also installs the optional flash-attn (GPU only)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
stamp="$VENV/.setup-done"
want="$(cat requirements.txt scripts/setup.sh | sha256sum | cut -c1-16)${WITH_FLASH_ATTN:+-fa}"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
PY="${PYTHON:-python3}"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] CUDA GPU found: installing the default torch==2.13.0 build"
  "${pip[@]}" "torch==2.13.0"
else
  # No GPU: the CPU build. A plain 'torch' would pull gigabytes of CUDA packages.
  echo "[setup] no CUDA GPU: installing the CPU build torch==2.13.0+cpu"
  "${pip[@]}" "torch==2.13.0+cpu" \
    || "${pip[@]}" "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
fi
"${pip[@]}" -r requirements.txt
if [[ -n "${WITH_FLASH_ATTN:-}" ]]; then
  "${pip[@]}" flash-attn --no-build-isolation
fi
echo "$want" > "$stamp"
echo "[setup] done: $VENV"
