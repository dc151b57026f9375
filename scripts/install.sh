#!/usr/bin/env bash
# Installs transformers-space and what it needs, from this checkout. Usage: bash scripts/install.sh [EXTRAS]
# torch: an existing install is kept; otherwise torch==2.13.0 is installed (on the project's CPU machines
# that resolves to a local CPU wheel; elsewhere pip picks the build for the platform).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install -q "torch==2.13.0"
fi
extras=${1:-}
"$PYTHON" -m pip install -q -e ".${extras:+[$extras]}"
