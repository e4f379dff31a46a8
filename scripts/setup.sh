#!/usr/bin/env bash
# Create .venv and install HDX with its test tools. Safe to run again.
# torch is installed first and pinned, so pip takes the CPU wheel instead of
# pulling the CUDA build as a dependency of sentence-transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
echo "HDX installed in $(pwd)/.venv"
