#!/usr/bin/env bash
# Quick start on the embedded defaults (SQLite, in-process cache, local stores under var/):
# install, train on the simulator if no models exist, build the retrieval index if
# none exists, create a development admin, then serve on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Development mode: the built-in JWT secret is accepted. Never set this in production;
# set HDX_JWT_SECRET (32+ bytes) instead.
export HDX_DEV_MODE=${HDX_DEV_MODE:-true}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/hdx bootstrap
# serve_config.yaml as this environment runs it: without HDX_REDIS_URL, one Ingress replica.
.venv/bin/hdx serve-config --out var/serve_config.yaml
# Ray's environment (configs/ray_env.py): Serve's throughput-optimized mode with HAProxy on
# 127.0.0.1:8000, control intervals for a small cluster. Read by every Ray process at start.
eval "$(.venv/bin/hdx ray-env)"
exec .venv/bin/serve run var/serve_config.yaml
