#!/usr/bin/env bash
# One command on a fresh 2-core CPU workstation: set up .venv (CPU torch from the local wheel,
# cacstream built with its C++ kernels), then run the main job on the shipped default weights:
# phantom CT series are replayed slice by slice into an export folder that the engine watches,
# and each series is scored seconds after its last slice lands, next to the phantom's truth.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
. .venv/bin/activate
exec cacstream demo "$@"
