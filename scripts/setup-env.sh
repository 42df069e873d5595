#!/usr/bin/env bash
# Create .venv and install dpplat (editable) with its test extras; re-installs only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[dpplat] creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.dpplat-install-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[dpplat] installing dependencies into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    # Pinned here, not in pyproject.toml: left to the project's range, pip would take the newest torch, a
    # CUDA build of several GB, where torch 2.13.0 (the lowest version the suite runs on) suffices.
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
  fi
  .venv/bin/python -m pip install --quiet -e ".[test]"
  echo "$want" > "$stamp"
fi
