"""The payload log: a sample of served requests and answers as Parquet partitions by day
and profile, off the request path, bounded, flushed on shutdown."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hydraulics.channels import UCI_1HZ_CHANNELS
from storage.payload_log import PayloadLog, read_payloads, sampled
from tests.fixtures.db import TEST_PASSWORD, add_user
from tests.test_platform_support import platform_settings
from tests.test_profiles import _cycle, model_store  # noqa: F401  (model_store: a fixture)

BASIC_ALIASES = ["pressure", "temperature", "flow", "vibration"]


async def _add_engineer(db) -> None:
    async with db.sessionmaker() as session:
        await add_user(session, "eng", role="engineer", tier="enterprise")


@pytest.fixture
def logged_app(db, tmp_path, database_url, model_store):
    from api.application import create_app
    from tests.fixtures.local_ensemble import InProcessEnsemble

    uri = str(tmp_path / "payloads")
    settings = platform_settings(
        tmp_path,
        database_url,
        model_store_uri=model_store,
        payload_log_uri=uri,
        payload_log_sample=1.0,
        payload_log_flush_s=3600,  # nothing written before the shutdown, however slow the run
    )
    client = TestClient(create_app(settings))

    def started() -> TestClient:
        client.__enter__()
        client.app.state.ensemble = InProcessEnsemble(settings)
        client.portal.call(_add_engineer, client.app.state.db)
        token = client.post("/api/v1/auth/token", json={"username": "eng", "password": TEST_PASSWORD}).json()
        client.headers["Authorization"] = f"Bearer {token['access_token']}"
        return client

    return started, uri


def test_rows_equal_what_was_served_and_shutdown_writes_them(logged_app):
    start, uri = logged_app
    client = start()
    for system_id, channels in (("rig-log", list(UCI_1HZ_CHANNELS)), ("press-log", BASIC_ALIASES)):
        r = client.post("/api/v1/systems", json={"id": system_id, "name": system_id, "channels": channels})
        assert r.status_code == 201, r.text
    sent, answers = [], []
    one = _cycle(UCI_1HZ_CHANNELS, seed=3)
    r = client.post("/api/v1/diagnostics/predict", json={"system_id": "rig-log", "sensor_data": one})
    assert r.status_code == 200, r.text
    sent.append(("rig-log", "predict", one))
    answers.append(r.json())
    items = [_cycle(UCI_1HZ_CHANNELS, seed=4), _cycle(UCI_1HZ_CHANNELS, seed=5, valve=73)]
    r = client.post("/api/v1/diagnostics/predict/batch", json={"system_id": "rig-log", "items": items})
    assert r.status_code == 200 and r.json()["succeeded"] == 2, r.text
    sent += [("rig-log", "batch", c) for c in items]
    answers += [item["result"] for item in r.json()["items"]]
    alias = _cycle(["PS1", "TS1", "FS1", "VS1"], aliases=True, seed=6)
    r = client.post("/api/v1/diagnostics/predict", json={"system_id": "press-log", "sensor_data": alias})
    assert r.status_code == 200 and r.json()["profile"] == "basic", r.text
    sent.append(("press-log", "predict", alias))
    answers.append(r.json())
    assert not Path(uri).exists() or not read_payloads(uri).num_rows  # nothing written on the request path

    client.__exit__(None, None, None)  # the app's shutdown: the log writes what it holds
    rows = read_payloads(uri).to_pylist()
    assert len(rows) == 4
    by_trace: dict[str, list[dict]] = {}
    for row in rows:
        by_trace.setdefault(row["trace_id"], []).append(row)
    assert len(by_trace) == 3  # the batch's two cycles share their request's trace id
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    for (system_id, source, data), answer in zip(sent, answers):
        candidates = by_trace[answer["trace_id"]]
        [row] = [r for r in candidates if dict(r["sensor_data"]) == {k: [float(x) for x in v] for k, v in data.items()}]
        assert (row["system_id"], row["source"], row["day"]) == (system_id, source, today)
        assert row["profile"] == answer["profile"] == ("basic" if system_id == "press-log" else "uci-1hz")
        assert dict(row["model_versions"]) == answer["model_versions"]
        logged = json.loads(row["diagnosis"])
        assert logged["prediction"] == answer["prediction"]
        assert logged["model_versions"] == answer["model_versions"]
    partitions = sorted(p.relative_to(uri).parts[:2] for p in Path(uri).rglob("*.parquet"))
    assert {p for p in partitions} == {(f"day={today}", "profile=uci-1hz"), (f"day={today}", "profile=basic")}


def test_the_sample_is_decided_by_the_trace_id():
    ids = [uuid.uuid4().hex for _ in range(20_000)]
    share = sum(sampled(t, 0.1) for t in ids) / len(ids)
    assert 0.09 <= share <= 0.11
    assert all(sampled(t, 0.1) == sampled(t, 0.1) for t in ids[:100])
    assert not any(sampled(t, 0.0) for t in ids[:100]) and all(sampled(t, 1.0) for t in ids[:100])


def test_memory_is_bounded_and_a_failed_write_keeps_its_rows(tmp_path, model_store):
    from configs.settings import Settings
    from tests.fixtures.local_ensemble import InProcessEnsemble

    ensemble = InProcessEnsemble(Settings(model_store_uri=model_store, redis_url=None))
    [diagnosis] = asyncio.run(ensemble.diagnose.remote([_cycle(UCI_1HZ_CHANNELS)]))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log's folder should be")

    one_row = 60 * 8 + len(diagnosis.model_dump_json()) + 200  # what record counts for a row of 60 samples

    async def scenario() -> tuple[list[bool], int, int, int]:
        log = PayloadLog(str(blocked), sample=1.0, flush_interval_s=60, max_buffered_bytes=5 * one_row)
        kept = [log.record(f"t{i}", "rig", "predict", diagnosis, {"TS1": [1.0] * 60}) for i in range(8)]
        failed = await log.flush()  # the store refuses: the rows stay buffered
        log.uri = str(tmp_path / "payloads")  # the store is back
        written = await log.flush()
        await log.close()
        return kept, failed, written, log.dropped

    kept, failed, written, dropped = asyncio.run(scenario())
    assert kept == [True] * 5 + [False] * 3 and dropped == 3
    assert (failed, written) == (0, 5)
    assert sorted(r["trace_id"] for r in read_payloads(str(tmp_path / "payloads")).to_pylist()) == [
        f"t{i}" for i in range(5)
    ]
