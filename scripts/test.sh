#!/usr/bin/env bash
# Run the test suite (bootstraps .venv on a fresh machine). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@" tests
