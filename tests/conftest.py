"""Shared test fixtures.

One local Ray cluster serves the whole session (starting Ray costs seconds);
tests that need it take the ``ray_cluster`` fixture. Area-specific fixtures
live in ``tests/fixtures/`` and are registered below.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_UCI = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci_hydraulic"

pytest_plugins = ["tests.fixtures.db", "tests.fixtures.serve_app"]


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
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": hdx_env["env"]})
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
