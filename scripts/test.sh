#!/usr/bin/env bash
# Installs everything the tests need and runs them: lint, the suite on the newest supported transformers,
# then the same suite on the oldest supported release (5.17) in a throw-away virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
bash scripts/install.sh test
"$PYTHON" -m ruff check src tests examples benchmarks scripts
"$PYTHON" -m pytest -q "$@"
if [ "${SPACE_SKIP_OLDEST:-0}" != "1" ]; then
  venv=$(mktemp -d)/oldest
  "$PYTHON" -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install -q "transformers==5.17.0"
  echo "== the suite again on transformers $("$venv/bin/python" -c 'import transformers; print(transformers.__version__)')"
  # the oldest release reruns everything but the slow training runs (they exercise no version-specific code
  # beyond what the rest covers, and CI time is bounded)
  "$venv/bin/python" -m pytest -q -m "not slow" "$@"
fi
