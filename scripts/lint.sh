#!/usr/bin/env bash
# Lint and format check (ruff, configured in pyproject.toml). `ruff format .` and
# `ruff check --fix .` repair most of what this reports.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/ruff ] || bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
