"""Readings, prediction history and feedback repositories on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import event, select

from storage.batch_writer import BatchWriter
from storage.repositories import feedback as feedback_repo
from storage.repositories import predictions as predictions_repo
from storage.repositories import readings as readings_repo
from storage.tables import Reading
from tests.fixtures.db import add_system, add_user
from tests.test_platform_support import diagnosis, platform  # noqa: F401

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def cycle(key: str, minutes: int, value: float = 40.0) -> dict:
    return {"idempotency_key": key, "started_at": T0 + timedelta(minutes=minutes), "sensor_data": {"TS1": [value] * 60}}


async def test_readings_insert_once_per_key(session):
    owner = await add_user(session, "owner")
    await add_system(session, "rig-1", owner)
    await add_system(session, "rig-2", owner)
    assert await readings_repo.insert_new(session, "rig-1", [cycle("a", 0), cycle("b", 1)]) == {"a", "b"}
    await session.commit()
    # A retry with one new cycle and a changed copy of a stored one: only the new key goes in.
    assert await readings_repo.insert_new(session, "rig-1", [cycle("b", 1, 99.0), cycle("c", 2)]) == {"c"}
    # Keys are per system.
    assert await readings_repo.insert_new(session, "rig-2", [cycle("a", 0)]) == {"a"}
    await session.commit()
    assert await readings_repo.count(session, "rig-1") == 3
    stored_b = await session.scalar(select(Reading).where(Reading.system_id == "rig-1", Reading.idempotency_key == "b"))
    assert stored_b.sensor_data["TS1"][0] == 40.0  # the first write wins
    latest = await readings_repo.latest(session, "rig-1")
    assert latest.idempotency_key == "c" and latest.started_at == T0 + timedelta(minutes=2)
    window = await readings_repo.in_range(
        session, "rig-1", start=T0 + timedelta(minutes=1), end=T0 + timedelta(minutes=2)
    )
    assert [r.idempotency_key for r in window] == ["b"]


async def test_prediction_history_pages_and_filters(session):
    owner = await add_user(session, "owner")
    await add_system(session, "rig-1", owner)
    rows = [
        predictions_repo.row(
            "rig-1",
            diagnosis(sev, i / 10, cache_hit=i == 3),
            {"TS1": [1.0]},
            trace_id=f"t{i}",
            source="predict",
            user_id=owner.id,
        )
        for i, sev in enumerate(["normal", "warning", "critical", "warning", "normal"])
    ]
    ids = await predictions_repo.add_many(session, rows)
    await session.commit()
    assert ids == sorted(ids) and len(set(ids)) == 5
    newest_first = await predictions_repo.page(session, "rig-1", limit=2, offset=1)
    assert [p.trace_id for p in newest_first] == ["t3", "t2"]
    assert newest_first[0].cache_hit is True and "total_processing_time_ms" not in newest_first[0].result
    warnings = await predictions_repo.page(session, "rig-1", severity=["warning", "critical"])
    assert [p.trace_id for p in warnings] == ["t3", "t2", "t1"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await predictions_repo.page(session, "rig-1", start=future) == []
    assert (await predictions_repo.latest_prediction(session, "rig-1"))["severity"] == "normal"
    assert await predictions_repo.latest_prediction(session, "rig-2") is None
    assert await predictions_repo.get(session, "rig-other", ids[0]) is None

    fb = await feedback_repo.add(
        session, prediction_id=ids[0], system_id="rig-1", user_id=owner.id, components={"valve": 90}, note="lagging"
    )
    await feedback_repo.set_learned(session, fb, {"state_revision": "r1"})
    await session.commit()
    [stored] = await feedback_repo.for_prediction(session, ids[0])
    assert stored.components == {"valve": 90} and stored.learned == {"state_revision": "r1"}


async def test_prediction_rows_go_in_as_one_insert_and_ids_match_their_rows(session):
    """The history writer's batch is one INSERT … RETURNING on both backends (on SQLite
    this needs the insert sentinel; without it SQLAlchemy sends one INSERT per row), and
    the ids come back in row order."""
    owner = await add_user(session, "owner")
    await add_system(session, "rig-1", owner)
    rows = [
        predictions_repo.row(
            "rig-1",
            diagnosis("normal", i / 100),
            {"TS1": [float(i)]},
            trace_id=f"r{i}",
            source="predict",
            user_id=owner.id,
        )
        for i in range(25)
    ]
    inserts = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO PREDICTIONS"):
            inserts.append(statement)

    engine = session.bind.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        ids = await predictions_repo.add_many(session, rows)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    await session.commit()
    assert len(inserts) == 1
    stored = {p.id: p for p in await predictions_repo.page(session, "rig-1", limit=100)}
    assert [stored[i].trace_id for i in ids] == [f"r{i}" for i in range(25)]
    assert [stored[i].sensor_data["TS1"][0] for i in ids] == [float(i) for i in range(25)]


def test_latest_diagnosis_hook_reads_the_newest_stored_prediction(platform):
    """``app.state.latest_diagnosis`` is what the assistant router asks for a system's state."""

    async def seed(session):
        owner = await add_user(session, "hook-owner")
        await add_system(session, "rig-h", owner)
        rows = [
            predictions_repo.row(
                "rig-h", diagnosis(sev, 0.1), {"TS1": [1.0]}, trace_id=sev, source="predict", user_id=owner.id
            )
            for sev in ("normal", "critical")
        ]
        await predictions_repo.add_many(session, rows)
        await session.commit()

    platform.run(seed)
    hook = platform.app.state.latest_diagnosis
    latest = platform.client.portal.call(hook, "rig-h")
    assert latest["severity"] == "critical" and latest["diagnosed_at"].startswith("20")  # when: the answer says
    assert platform.client.portal.call(hook, "rig-none") is None


async def test_history_writer_close_finishes_the_batch_being_written(db):
    """Shutdown while a batch is in the database: the batch is committed and its caller answered."""
    import asyncio

    async with db.session() as session:
        owner = await add_user(session, "owner")
        await add_system(session, "rig-1", owner)
        await session.commit()
    writer = BatchWriter(db, predictions_repo.add_many, name="history")
    row = predictions_repo.row(
        "rig-1", diagnosis("normal", 0.1), {"TS1": [1.0]}, trace_id="in-flight", source="predict", user_id=owner.id
    )
    pending = asyncio.create_task(writer.write([row]))
    while writer._task is None or writer._queue:  # the writer has taken the batch and is inserting it
        await asyncio.sleep(0)
    await writer.close()
    [prediction_id] = await asyncio.wait_for(pending, 10)
    async with db.session() as session:
        assert (await predictions_repo.get(session, "rig-1", prediction_id)).trace_id == "in-flight"


async def test_history_writer_groups_concurrent_requests_and_keeps_their_ids(db):
    """Group commit: concurrent requests share transactions, and each gets the ids of its own rows."""
    import asyncio

    async with db.session() as session:
        owner = await add_user(session, "owner")
        await add_system(session, "rig-1", owner)
        await session.commit()
    writer = BatchWriter(db, predictions_repo.add_many, name="history")
    requests = [
        [
            predictions_repo.row(
                "rig-1",
                diagnosis("normal", 0.1),
                {"TS1": [float(i)]},
                trace_id=f"r{i}-{k}",
                source="predict",
                user_id=owner.id,
            )
            for k in range(1 + i % 3)
        ]
        for i in range(24)
    ]
    ids = await asyncio.gather(*(writer.write(rows) for rows in requests))
    assert writer.rows_written == sum(len(r) for r in requests) and writer.commits < len(requests)
    async with db.session() as session:
        for rows, got in zip(requests, ids):
            assert len(got) == len(rows)
            for row, prediction_id in zip(rows, got):
                stored = await predictions_repo.get(session, "rig-1", prediction_id)
                assert stored.trace_id == row["trace_id"]

    # A batch the database refuses fails only the requests in it; the writer goes on.
    bad = dict(requests[0][0], system_id="no-such-system")  # violates the foreign key
    results = await asyncio.gather(writer.write([bad]), return_exceptions=True)
    assert isinstance(results[0], Exception)
    [later] = await writer.write([dict(requests[0][0], trace_id="after")])
    assert later > max(max(i) for i in ids)
    await writer.close()


PREDICT = {"system_id": "rig-p", "sensor_data": {"TS1": [45.0] * 60}, "use_cache": False}


def _shared_system(platform) -> dict:
    """rig-p of an owner, shared read-only with a viewer and an engineer, and writable with another engineer."""
    c = platform.client
    people = {
        "owner": platform.user("engineer"),
        "viewer": platform.user("viewer"),
        "reader": platform.user("engineer"),
        "writer": platform.user("engineer"),
    }
    owner = people["owner"]["headers"]
    assert c.post("/api/v1/systems", json={"id": "rig-p", "name": "n"}, headers=owner).status_code == 201
    for who, permission in (("viewer", "read"), ("reader", "read"), ("writer", "write")):
        grant = {"username": people[who]["username"], "permission": permission}
        assert c.post("/api/v1/systems/rig-p/members", json=grant, headers=owner).status_code == 201
    return people


def test_read_only_members_predictions_are_answered_but_not_stored(platform):
    c, people = platform.client, _shared_system(platform)
    for who in ("viewer", "reader"):
        r = c.post("/api/v1/diagnostics/predict", json=PREDICT, headers=people[who]["headers"])
        assert r.status_code == 200 and r.json()["prediction"]["severity"] == "warning"
        assert "X-Prediction-ID" not in r.headers
        batch = {"system_id": "rig-p", "items": [PREDICT["sensor_data"]] * 2, "use_cache": False}
        r = c.post("/api/v1/diagnostics/predict/batch", json=batch, headers=people[who]["headers"])
        assert r.status_code == 200 and r.json()["succeeded"] == 2 and "X-Prediction-IDs" not in r.headers
    # Nothing stored, so nothing for the assistant to ground on; reading the (empty) history is allowed.
    assert platform.client.portal.call(platform.app.state.latest_diagnosis, "rig-p") is None
    r = c.get("/api/v1/systems/rig-p/predictions", headers=people["viewer"]["headers"])
    assert r.status_code == 200 and r.json()["items"] == []

    # Those who may change the system write the history; reading it needs read access, feedback write access.
    stored = [
        int(
            c.post("/api/v1/diagnostics/predict", json=PREDICT, headers=people[who]["headers"]).headers[
                "X-Prediction-ID"
            ]
        )
        for who in ("owner", "writer")
    ]
    listed = c.get("/api/v1/systems/rig-p/predictions", headers=people["viewer"]["headers"]).json()["items"]
    assert sorted(p["id"] for p in listed) == sorted(stored)
    feedback = {"components": {"valve": 100}}
    url = f"/api/v1/systems/rig-p/predictions/{stored[0]}/feedback"
    for who in ("viewer", "reader"):
        r = c.post(url, json=feedback, headers=people[who]["headers"])
        assert r.status_code == 403 and "may not change system 'rig-p'" in r.json()["detail"]
    assert c.post(url, json=feedback, headers=people["writer"]["headers"]).status_code == 201
    stranger = platform.user("engineer")
    assert c.get("/api/v1/systems/rig-p/predictions", headers=stranger["headers"]).status_code == 403


def test_a_history_that_cannot_store_is_503_not_a_200_without_an_id(platform):
    from storage.db import Database

    c, people = platform.client, _shared_system(platform)
    owner = people["owner"]["headers"]
    history = platform.app.state.history
    real_db, down = history.db, Database("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    history.db = down  # nothing listens there: every write is refused, as in an outage
    try:
        r = c.post("/api/v1/diagnostics/predict", json=PREDICT, headers=owner)
        assert r.status_code == 503 and r.headers["Retry-After"] and "X-Prediction-ID" not in r.headers
        assert "could not be stored in the prediction history" in r.json()["detail"]
        batch = {"system_id": "rig-p", "items": [PREDICT["sensor_data"]], "use_cache": False}
        assert c.post("/api/v1/diagnostics/predict/batch", json=batch, headers=owner).status_code == 503
        # Ingestion: the readings are stored; the diagnosis is reported as failed, with no ids.
        cycles = [
            {"idempotency_key": "k1", "started_at": "2026-03-01T12:00:00Z", "sensor_data": PREDICT["sensor_data"]}
        ]
        r = c.post(
            "/api/v1/ingestion/cycles", json={"system_id": "rig-p", "cycles": cycles, "diagnose": True}, headers=owner
        )
        assert r.status_code == 200 and r.json()["stored"] == 1
        assert "prediction history" in r.json()["diagnosis_error"]
        assert [item["prediction_id"] for item in r.json()["items"]] == [None]
    finally:
        history.db = real_db
        platform.client.portal.call(down.dispose)
    assert c.get("/api/v1/systems/rig-p/readings", headers=owner).json()["items"][0]["idempotency_key"] == "k1"
    assert c.get("/api/v1/systems/rig-p/predictions", headers=owner).json()["items"] == []
    r = c.post("/api/v1/diagnostics/predict", json=PREDICT, headers=owner)
    assert r.status_code == 200 and r.headers["X-Prediction-ID"]  # the database is back
