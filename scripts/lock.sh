#!/usr/bin/env bash
# Regenerate requirements-lock.txt, the pinned versions of every direct and transitive dependency, from
# pyproject.toml's ranges (plus scripts/lock-pins.txt). scripts/install.sh installs through it.
#   bash scripts/lock.sh            # keep the locked versions that still satisfy pyproject.toml
#   bash scripts/lock.sh --upgrade  # move every package to the newest release the ranges admit
# Needs uv (`pip install uv`). Review the diff, run the test suite, and commit the lock with the change.
set -euo pipefail
cd "$(dirname "$0")/.."
uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
  --constraint scripts/lock-pins.txt --no-annotate --quiet \
  --custom-compile-command "bash scripts/lock.sh" -o requirements-lock.txt "$@"
