"""The audit trail: a record per call (allowed, denied, failed), none lost at shutdown; admin-only reading."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from fastapi.testclient import TestClient

from api.application import create_app
from storage.repositories.audit import AuditFilter, search
from tests.test_platform_support import Platform, platform, platform_settings  # noqa: F401


def _records(p: Platform, **filters):
    p.flush_audit()
    return p.run(lambda s: search(s, AuditFilter(**filters), limit=1000))


def test_allowed_denied_and_failed_calls_are_recorded(platform):
    c = platform.client
    owner, stranger, admin = platform.user("engineer"), platform.user("engineer"), platform.user("admin")
    c.post("/api/v1/systems", json={"id": "rig-au", "name": "n"}, headers=owner["headers"])
    c.get("/api/v1/systems/rig-au", headers={**stranger["headers"], "X-Request-ID": "trace-denied-1"})
    c.get("/api/v1/systems/rig-au", headers={"Authorization": "Bearer not-a-jwt"})
    c.get("/api/v1/systems")

    created = _records(platform, user_id=owner["id"], route="/api/v1/systems", status=201)
    assert len(created) == 1 and created[0].method == "POST" and created[0].outcome == "ok"
    assert created[0].latency_ms > 0 and created[0].client and created[0].username == owner["username"]

    [denied] = _records(platform, user_id=stranger["id"], outcome="denied")
    assert denied.route == "/api/v1/systems/{system_id}" and denied.system_id == "rig-au"
    assert denied.status == 403 and denied.trace_id == "trace-denied-1"

    failed = _records(platform, outcome="auth_failed")
    assert {(r.path, r.status, r.user_id) for r in failed} == {
        ("/api/v1/systems/rig-au", 401, None),
        ("/api/v1/systems", 401, None),
    }

    # Admins read the trail through the API, filtered; others may not.
    r = c.get("/api/v1/audit", params={"system_id": "rig-au", "status": 403}, headers=admin["headers"])
    assert r.status_code == 200 and [i["trace_id"] for i in r.json()["items"]] == ["trace-denied-1"]
    r = c.get(
        "/api/v1/audit",
        params={"username": owner["username"], "start": "2000-01-01T00:00:00Z"},
        headers=admin["headers"],
    )
    assert {i["route"] for i in r.json()["items"]} == {"/api/v1/systems"}
    r = c.get("/api/v1/audit", headers=owner["headers"])
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert _records(platform, user_id=owner["id"], route="/api/v1/audit", status=403)
    # The soft delete of a system is on record, with who did it.
    assert c.delete("/api/v1/systems/rig-au", headers=owner["headers"]).status_code == 204
    [deleted] = _records(platform, system_id="rig-au", route="/api/v1/systems/{system_id}", status=204)
    assert deleted.method == "DELETE" and deleted.username == owner["username"]
    # Probes are not audited.
    c.get("/api/v1/health")
    assert not _records(platform, route="/api/v1/health")


def test_nothing_is_lost_on_graceful_shutdown(db, tmp_path: Path, database_url: str):
    # A flush interval far longer than the test: only the shutdown flush can write these.
    settings = platform_settings(tmp_path, database_url, audit_flush_interval_s=3600)
    with TestClient(create_app(settings)) as client:
        p = Platform(client)
        for i in range(25):
            client.get("/api/v1/systems", headers={"X-Request-ID": f"shutdown-{i}"})
        assert p.app.state.audit.backlog == 25
    with TestClient(create_app(settings)) as client:
        p = Platform(client)
        rows = p.run(lambda s: search(s, AuditFilter(route="/api/v1/systems"), limit=100))
    assert sorted(r.trace_id for r in rows) == sorted(f"shutdown-{i}" for i in range(25))


def test_a_database_outage_delays_the_trail_without_losing_it(platform):
    writer = platform.app.state.audit
    real_db = writer.db

    class Down:
        def sessionmaker(self):
            raise ConnectionError("database is down")

    writer.db = Down()
    platform.client.get("/api/v1/systems", headers={"X-Request-ID": "during-outage"})
    assert platform.client.portal.call(writer.flush) is False
    assert writer.backlog >= 1
    writer.db = real_db
    assert [r.trace_id for r in _records(platform, trace_id="during-outage")] == ["during-outage"]


def test_json_log_lines_carry_the_trace_id(platform):
    from api.log_format import JsonFormatter, TraceIdFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceIdFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger("hdx.access").addHandler(handler)
    try:
        platform.client.get("/api/v1/systems", headers={"X-Request-ID": "trace-log-7"})
    finally:
        logging.getLogger("hdx.access").removeHandler(handler)
    [line] = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["trace_id"] == "trace-log-7" and line["status"] == 401 and line["route"] == "/api/v1/systems"
    assert line["level"] == "INFO" and line["logger"] == "hdx.access"


def test_records_kept_through_an_outage_survive_a_restart(db, tmp_path: Path, database_url: str):
    """The app's audit writer spools under ``home``: a replica stopped while the database is down
    leaves its records there, and the next one to start writes them."""
    import asyncio

    from storage.db import Database

    settings = platform_settings(tmp_path, database_url, audit_flush_interval_s=3600)
    down = Database("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")  # nothing listens: an outage
    with TestClient(create_app(settings)) as client:
        client.get("/api/v1/systems", headers={"X-Request-ID": "before-restart"})
        client.app.state.audit.db = down  # stopped during the outage: the shutdown flush fails
    asyncio.run(down.dispose())
    assert list((tmp_path / "spool").glob("audit-*.jsonl"))
    with TestClient(create_app(settings)) as client:
        p = Platform(client)
        assert [r.trace_id for r in _records(p, trace_id="before-restart")] == ["before-restart"]
