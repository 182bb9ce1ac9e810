#!/usr/bin/env bash
# Install edgesft and what it needs, from the package registries only, at the versions of the committed
# lock (requirements-lock.txt; `bash scripts/lock.sh` regenerates it from pyproject.toml's ranges).
#   bash scripts/install.sh          # the tool
#   bash scripts/install.sh --dev    # plus the test and lint tools
# PYTHON picks the interpreter (default: python3, i.e. the active virtual environment's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements-lock.txt

case "${1:-}" in
  "") extra="" ;;
  --dev) extra="[dev]" ;;
  *) echo "usage: bash scripts/install.sh [--dev]" >&2; exit 2 ;;
esac

# The lock is used as pip constraints: it fixes the version of everything pip installs, and adds nothing
# that no requirement asks for (its CUDA entries for torch's GPU build stay uninstalled on a CPU torch).
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if "$PY" -c "import torch" >/dev/null 2>&1; then
  # Keep a torch the user already has (a CUDA or ROCm build, say): the rest of the lock still applies.
  grep -v '^torch==' "$LOCK" > "$constraints"
else
  cp "$LOCK" "$constraints"
  # torch first, on its own: installed as a dependency of a later package, pip could take a CUDA build of
  # several GB where a CPU one is at hand.
  "$PY" -m pip install "$(grep '^torch==' "$LOCK" | cut -d' ' -f1)"
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
  CMAKE_ARGS="${EDGESFT_LLAMA_CMAKE_ARGS:-$default_args}" "$PY" -m pip install -c "$constraints" llama-cpp-python
fi

"$PY" -m pip install -c "$constraints" -e ".${extra}"

# llama.cpp's HF -> GGUF converter is a script in llama.cpp's source tree, not a package: take it, version-
# matched, from the source release of the llama-cpp-python just installed (the only download it makes; a
# converter already installed for that version is kept). EDGESFT_LLAMA_SDIST names a release file already
# downloaded.
if ! "$PY" -m edgesft.llama_convert where >/dev/null 2>&1; then
  "$PY" -m edgesft.llama_convert install ${EDGESFT_LLAMA_SDIST:+--sdist "$EDGESFT_LLAMA_SDIST"}
fi
