"""Shared test fixtures.

One local Ray cluster serves the whole session (starting Ray costs seconds);
tests that need it take the ``ray_cluster`` fixture. Area-specific fixtures
live in ``tests/fixtures/`` and are registered below.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from configs.ray_env import apply_ray_env

# Ray starts as the quick start starts it (configs.ray_env: Serve's throughput-optimized
# mode with HAProxy). Set before anything imports ray.serve, which reads it once.
apply_ray_env()
# That mode runs a handle's router on the caller's event loop, and this driver calls
# handles synchronously (``handle.method.remote(...).result()``) outside any loop, so the
# driver alone keeps Serve's router thread; the cluster's processes get "0" back through
# the job's runtime_env (``ray_cluster``), as in the quick start.
os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] = "1"
ROUTER_ON_CALLER_LOOP = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}

SHARED_UCI = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci_hydraulic"

pytest_plugins = ["tests.fixtures.db", "tests.fixtures.knowledge", "tests.fixtures.serve_app"]


@pytest.fixture(scope="session")
def uci_dir() -> Path:
    if not (SHARED_UCI / "profile.txt").exists():
        pytest.skip(f"UCI rig data not found at {SHARED_UCI} (the ../shared checkout is absent)")
    return SHARED_UCI


@pytest.fixture(scope="session")
def ray_cluster(hdx_env):
    """Every task and replica of the session sees the ``hdx_env`` settings. CPUs are
    logical: 8 lets the session app and the assistant app run side by side."""
    import ray

    if not ray.is_initialized():
        env = {**hdx_env["env"], **ROUTER_ON_CALLER_LOOP}
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray
    # Serve (if any test started it) goes down with the cluster.
    ray.shutdown()


@pytest.fixture(autouse=True)
def _isolated_settings_cache():
    """Settings are cached per process; tests that change HDX_* env vars see fresh ones."""
    from configs.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
