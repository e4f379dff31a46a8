"""Shared helpers of the platform tests (no tests here): the API app in-process.

``platform`` runs ``api.application.create_app`` in a ``TestClient`` (lifespan included:
migrations, audit writer, rate limiter) on the ``database_url`` fixture, so each
test using it runs on SQLite and on PostgreSQL (the ``db`` fixture empties the
tables afterwards). No Ray: routes that need the ensemble are covered by the
Serve tests. Database set-up runs on the app's own event loop via the portal.

``StandInEnsemble`` answers for the ensemble handle where a test is about what the
ingress does around a diagnosis (history, permissions, ids): the model deployments
run only under Ray, and their answers are tested there.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from auth.api_keys import create_api_key
from configs.settings import Settings
from diagnosis.report import Diagnosis, Verdict
from storage.repositories import users as users_repo
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

    def api_key(self, user: dict, system_ids: list[str]) -> dict:
        """Headers with a new API key of ``user``, scoped to ``system_ids``."""

        async def make(session):
            owner = await users_repo.get_user(session, user["id"])
            _, plaintext = await create_api_key(session, owner=owner, name="test", system_ids=system_ids)
            await session.commit()
            return plaintext

        return {"X-API-Key": self.run(make)}

    def flush_audit(self) -> None:
        """Write the buffered audit records now (what the timer does every interval)."""
        assert self.client.portal.call(self.app.state.audit.flush)


def diagnosis(severity: str = "warning", score: float = 0.7, cache_hit: bool = False) -> Diagnosis:
    return Diagnosis(
        prediction=Verdict(
            severity=severity,
            is_anomaly=severity != "normal",
            anomaly_score=score,
            components={},
            confidence=0.9,
            affected_components=[],
            anomaly_type="none",
        ),
        ml_predictions=[],
        model_versions={"adaptive": "v1"},
        cache_hit=cache_hit,
        total_processing_time_ms=3.0,
        ensemble_score=score,
        ensemble_coverage=1.0,
        features_extracted=1,
    )


class _Method:
    def __init__(self, fn):
        self.remote = fn


class StandInEnsemble:
    """The ``DiagnosisEnsemble`` handle's methods, answering ``diagnosis()`` for every cycle."""

    def __init__(self):
        async def diagnose(cycles, profile=None, components=None):
            return [diagnosis() for _ in cycles]

        async def models_info():
            return {}

        async def served_profiles():
            return {}  # no versions known: the prediction cache stays out of the way

        async def learn(cycle, labels, profile=None):
            return {"targets_updated": 1}

        self.diagnose, self.models_info, self.learn = _Method(diagnose), _Method(models_info), _Method(learn)
        self.served_profiles = _Method(served_profiles)


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
        client.app.state.ensemble = StandInEnsemble()
        yield Platform(client)
