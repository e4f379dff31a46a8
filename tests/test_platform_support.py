"""Shared helpers of the platform tests (no tests here): the API app in-process.

``platform`` runs ``api.application.create_app`` in a ``TestClient`` (lifespan included:
migrations, audit writer, rate limiter) on the ``database_url`` fixture, so each
test using it runs on SQLite and on PostgreSQL (the ``db`` fixture empties the
tables afterwards). No Ray: routes that need the ensemble are covered by the
Serve tests. Database set-up runs on the app's own event loop via the portal.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from configs.settings import Settings
from tests.fixtures.db import TEST_PASSWORD, add_user

SMALL_TIERS = """
tiers:
  free: {per_minute: 1000, daily_quota: 100000}
  tiny: {per_minute: 3, daily_quota: 1000, window_s: 2}
  stingy: {per_minute: 100, daily_quota: 4}
"""


class Platform:
    def __init__(self, client: TestClient):
        self.client = client
        self.app = client.app

    def run(self, fn, *args):
        """Run ``async fn(session, *args)`` on the app's loop with a session of the app's database."""

        async def call():
            async with self.app.state.db.sessionmaker() as session:
                return await fn(session, *args)

        return self.client.portal.call(call)

    def user(self, role: str = "engineer", tier: str = "free") -> dict:
        name = f"{role[:3]}-{uuid.uuid4().hex[:8]}"
        user = self.run(lambda s: add_user(s, name, role, tier=tier))
        r = self.client.post("/api/v1/auth/token", json={"username": name, "password": TEST_PASSWORD})
        assert r.status_code == 200, r.text
        return {"id": user.id, "username": name, "headers": {"Authorization": f"Bearer {r.json()['access_token']}"}}

    def flush_audit(self) -> None:
        """Write the buffered audit records now (what the timer does every interval)."""
        assert self.client.portal.call(self.app.state.audit.flush)


def platform_settings(tmp_path: Path, database_url: str, **overrides) -> Settings:
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(SMALL_TIERS)
    return Settings(
        **{
            "home": tmp_path,
            "dev_mode": True,
            "database_url": database_url,
            "redis_url": None,
            "tiers_path": tiers,
            "audit_flush_interval_s": 0.2,
            **overrides,
        }
    )


@pytest.fixture
def platform(db, tmp_path: Path, database_url: str):
    from api.application import create_app

    with TestClient(create_app(platform_settings(tmp_path, database_url))) as client:
        yield Platform(client)
