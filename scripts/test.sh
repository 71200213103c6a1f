#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up .venv if needed, then pytest (GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
. .venv/bin/activate
python -m pytest -q "$@"
