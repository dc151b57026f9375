#!/usr/bin/env bash
# The project's checks, as CI runs them (.ci/run calls this): lint, then the suite on the newest supported
# transformers, then again on the oldest supported release (5.17). Each suite runs in a virtual environment made
# afresh that holds only what pyproject.toml declares (`.[test]`), so a package that merely happens to be on this
# machine cannot make the suite pass. The environments live in .venv/ (git-ignored); SPACE_REUSE_VENV=1 keeps
# them between local runs, SPACE_SKIP_OLDEST=1 skips the second suite. vLLM's tests run against a separate
# environment (scripts/vllm_env.sh, .venv/vllm, kept once built); SPACE_SKIP_VLLM=1 deselects them. Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

make_env() {  # make_env DIR: a virtual environment with this project and its test extra, nothing else
  local dir=$1
  if [ "${SPACE_REUSE_VENV:-0}" = "1" ] && [ -x "$dir/bin/python" ]; then
    PYTHON="$dir/bin/python" bash scripts/install.sh test
    return
  fi
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip
  PYTHON="$dir/bin/python" bash scripts/install.sh test
}

newest=.venv/test
make_env "$newest"
"$newest/bin/python" -m ruff check src tests examples benchmarks scripts docs
select=()
if [ "${SPACE_SKIP_VLLM:-0}" = "1" ]; then
  select=(-m "not vllm")
else
  bash scripts/vllm_env.sh .venv/vllm
fi
echo "== the suite on transformers $("$newest/bin/python" -c 'import transformers; print(transformers.__version__)')"
PATH="$PWD/$newest/bin:$PATH" "$newest/bin/python" -m pytest -q "${select[@]}" "$@"  # its console scripts too
if [ "${SPACE_SKIP_OLDEST:-0}" != "1" ]; then
  oldest=.venv/test-oldest
  make_env "$oldest"
  "$oldest/bin/python" -m pip install -q "transformers==5.17.0"
  echo "== the suite again on transformers $("$oldest/bin/python" -c 'import transformers; print(transformers.__version__)')"
  # the oldest release reruns everything but the slow training runs (they exercise no version-specific code
  # beyond what the rest covers, and CI time is bounded)
  PATH="$PWD/$oldest/bin:$PATH" "$oldest/bin/python" -m pytest -q -m "not slow" "$@"
fi
