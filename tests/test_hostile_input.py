"""Hostile input over real HTTP, on SQLite and PostgreSQL: every client-supplied value is bounded where it
enters, so a bad one is a 4xx naming the field, never a 500, a stalled audit trail or a lost history row."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from storage.repositories.audit import AuditFilter, search
from storage.repositories.predictions import page
from tests.test_platform_support import Platform, platform  # noqa: F401  (fixture)

CYCLE = {"TS1": [45.0] * 60}
HUGE = "99999999999999999999"
OVERFLOWING = "0001-01-01T00:00:00+14:00"  # exists, but not in UTC


def _owner_with_system(p: Platform, system_id: str = "rig-h") -> dict:
    owner = p.user("engineer")
    r = p.client.post("/api/v1/systems", json={"id": system_id, "name": "n"}, headers=owner["headers"])
    assert r.status_code == 201, r.text
    return owner


def _problem(r, field: str) -> str:
    """The 422's message for the field ``field`` (the last part of its loc)."""
    assert r.status_code == 422, r.text
    [message] = [e["msg"] for e in r.json()["detail"] if e["loc"][-1] == field]
    return message


def test_a_nul_in_an_unmatched_path_does_not_stop_the_audit_trail(platform):
    c = platform.client
    assert c.get("/%00").status_code == 404
    c.get("/api/v1/systems", headers={"X-Request-ID": "after-the-nul"})
    platform.flush_audit()  # asserts the flush wrote everything
    [nul] = platform.run(lambda s: search(s, AuditFilter(route="<unmatched>")))
    assert nul.path == "/\\x00" and nul.status == 404
    assert [r.trace_id for r in platform.run(lambda s: search(s, AuditFilter(trace_id="after-the-nul")))]


@pytest.mark.parametrize(
    "path, field, message",
    [
        ("/api/v1/systems/%00", "system_id", "control characters"),
        ("/api/v1/systems/rig%0Ah", "system_id", "control characters"),
        ("/api/v1/systems/" + "r" * 65, "system_id", "at most 64 characters"),
        (f"/api/v1/systems/rig-h/predictions/{HUGE}", "prediction_id", "less than or equal to 2147483647"),
        ("/api/v1/systems/rig-h/predictions/0", "prediction_id", "greater than or equal to 1"),
        (f"/api/v1/systems?offset={HUGE}", "offset", "less than or equal to 1000000"),
        (f"/api/v1/systems/rig-h/predictions?offset={HUGE}", "offset", "less than or equal to 1000000"),
        (f"/api/v1/systems/rig-h/readings?offset={HUGE}", "offset", "less than or equal to 1000000"),
        (f"/api/v1/systems/rig-h/predictions?start={OVERFLOWING}", "start", "out of range once converted to UTC"),
        (f"/api/v1/systems/rig-h/readings?end={OVERFLOWING}", "end", "out of range once converted to UTC"),
    ],
)
def test_bad_ids_offsets_and_times_are_422_naming_the_field(platform, path, field, message):
    owner = _owner_with_system(platform)
    r = platform.client.get(path.replace("+", "%2B"), headers=owner["headers"])
    assert message in _problem(r, field)


def test_admin_filters_are_bounded(platform):
    admin = platform.user("admin")
    for params, field, message in [
        ({"offset": HUGE}, "offset", "less than or equal to 1000000"),
        ({"user_id": HUGE}, "user_id", "less than or equal to 2147483647"),
        ({"system_id": "rig\x00"}, "system_id", "control characters"),
        ({"username": "u" * 65}, "username", "at most 64 characters"),
        ({"trace_id": "t\x00"}, "trace_id", "control characters"),
        ({"start": OVERFLOWING}, "start", "out of range once converted to UTC"),
    ]:
        r = platform.client.get("/api/v1/audit", params=params, headers=admin["headers"])
        assert message in _problem(r, field), params
    # In range they are answered, with nothing found.
    r = platform.client.get(
        "/api/v1/audit", params={"offset": 1_000_000, "user_id": 2**31 - 1}, headers=admin["headers"]
    )
    assert r.status_code == 200 and r.json()["items"] == []


def test_bodies_refuse_nul_and_over_long_values(platform):
    c = platform.client
    owner = _owner_with_system(platform)
    h = owner["headers"]
    cases = [
        ("/api/v1/systems", {"id": "rig-x", "name": "a\x00b"}, "name", "control characters"),
        ("/api/v1/systems", {"id": "rig-x", "name": "n" * 201}, "name", "at most 200 characters"),
        ("/api/v1/systems", {"id": "rig-x", "name": "n", "owner_id": 2**40}, "owner_id", "2147483647"),
        (
            "/api/v1/systems",
            {"id": "rig-x", "name": "n", "topology": {"nodes": [{"id": "p", "kind": "pump", "label": "\x00"}]}},
            "label",
            "control characters",
        ),
        ("/api/v1/systems/rig-h/members", {"username": "u\x00"}, "username", "control characters"),
        ("/api/v1/diagnostics/predict", {"system_id": "rig\x00", "sensor_data": CYCLE}, "system_id", "control"),
        ("/api/v1/diagnostics/predict", {"system_id": "r" * 65, "sensor_data": CYCLE}, "system_id", "at most 64"),
        (
            "/api/v1/ingestion/cycles",
            {"system_id": "rig\x00h", "cycles": [{"idempotency_key": "k", "started_at": "2026-01-01T00:00:00Z"}]},
            "system_id",
            "control characters",
        ),
        (
            "/api/v1/ingestion/cycles",
            {
                "system_id": "rig-h",
                "cycles": [{"idempotency_key": "k\x00", "started_at": OVERFLOWING, "sensor_data": CYCLE}],
            },
            "started_at",
            "out of range once converted to UTC",
        ),
    ]
    for url, body, field, message in cases:
        r = c.post(url, json=body, headers=h)
        assert message in _problem(r, field), (url, body)
    r = c.delete(f"/api/v1/systems/rig-h/members/{HUGE}", headers=h)
    assert "less than or equal to 2147483647" in _problem(r, "user_id")
    # A note may have line breaks, not a NUL.
    note_url = "/api/v1/systems/rig-h/predictions/1/feedback"
    r = c.post(note_url, json={"components": {"valve": 100}, "note": "a\x00"}, headers=h)
    assert "control characters" in _problem(r, "note")
    r = c.post(note_url, json={"components": {"valve": 100}, "note": "line one\nline two"}, headers=h)
    assert r.status_code == 404  # valid: there is just no such prediction


def test_an_unsafe_request_id_is_refused_and_cannot_drop_other_requests_history(platform):
    """The reproduction: twelve concurrent predictions, one with a 100-character X-Request-ID. That
    one is a 400 saying what is wrong (nothing stored under it); the eleven others are answered
    with their own stored predictions."""
    owner = _owner_with_system(platform)
    c = platform.client
    long_id = "x" * 100

    def predict(i: int):
        trace = long_id if i == 5 else f"req-{i}"
        return c.post(
            "/api/v1/diagnostics/predict",
            json={"system_id": "rig-h", "sensor_data": CYCLE, "use_cache": False},
            headers={**owner["headers"], "X-Request-ID": trace},
        )

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(predict, range(12)))
    assert [r.status_code for r in answers] == [200] * 5 + [400] + [200] * 6
    refused = answers[5]
    assert (
        "X-Request-ID must be 1-64 characters" in refused.json()["detail"]
        and "100 characters" in refused.json()["detail"]
    )
    assert refused.headers["X-Request-ID"] == refused.json()["trace_id"] != long_id
    answered = [r for i, r in enumerate(answers) if i != 5]
    assert [r.headers["X-Request-ID"] for r in answered] == [f"req-{i}" for i in range(12) if i != 5]
    stored = platform.run(lambda s: page(s, "rig-h", limit=100))
    assert sorted(int(r.headers["X-Prediction-ID"]) for r in answered) == sorted(p.id for p in stored)
    # Other unsafe ids (spaces, markup) are refused too; an empty header counts as none.
    for sent in ("a b", "<script>"):
        r = c.get("/api/v1/systems", headers={**owner["headers"], "X-Request-ID": sent})
        assert r.status_code == 400 and r.headers["X-Request-ID"] != sent
    r = c.get("/api/v1/systems", headers={**owner["headers"], "X-Request-ID": ""})
    assert r.status_code == 200 and r.headers["X-Request-ID"]


def test_values_of_another_json_type_are_refused_not_coerced(platform):
    """Found by the schema fuzzer (tests/test_fuzz_api.py): pydantic's lax mode took what the schema does
    not allow and made something of it: ``start=0.5`` as a time in 1970, ``true`` as a sensor sample,
    ``0`` as ``use_cache``, ``"100"`` as a condition level. Each is a 422 naming the field now."""
    c = platform.client
    owner, admin = _owner_with_system(platform), platform.user("admin")
    h = owner["headers"]
    for url, headers in (("/api/v1/audit", admin["headers"]), ("/api/v1/systems/rig-h/readings", h)):
        for field, value in (("start", "0.5"), ("end", "1700000000"), ("start", "1e3")):
            r = c.get(url, params={field: value}, headers=headers)
            assert "ISO 8601 date-time with a timezone" in _problem(r, field), (url, field, value)
    cycle = {"idempotency_key": "k", "started_at": "2026-01-01T00:00:00Z", "sensor_data": CYCLE}
    cases = [
        (
            "/api/v1/ingestion/cycles",
            {"system_id": "rig-h", "cycles": [{**cycle, "started_at": 1767225600}]},
            "started_at",
            "ISO 8601",
        ),
        (
            "/api/v1/ingestion/cycles",
            {"system_id": "rig-h", "cycles": [{**cycle, "sensor_data": {"TS1": [True]}}]},
            0,
            "valid number",
        ),
        (
            "/api/v1/ingestion/cycles",
            {"system_id": "rig-h", "cycles": [cycle], "diagnose": "yes"},
            "diagnose",
            "valid boolean",
        ),
        ("/api/v1/diagnostics/predict", {"system_id": "rig-h", "sensor_data": {"TS1": ["45.0"]}}, 0, "valid number"),
        (
            "/api/v1/diagnostics/predict",
            {"system_id": "rig-h", "sensor_data": CYCLE, "use_cache": 0},
            "use_cache",
            "valid boolean",
        ),
        (
            "/api/v1/diagnostics/predict/batch",
            {"system_id": "rig-h", "items": [CYCLE], "use_cache": "true"},
            "use_cache",
            "valid boolean",
        ),
        ("/api/v1/systems/rig-h/predictions/1/feedback", {"components": {"valve": "100"}}, "valve", "valid integer"),
        ("/api/v1/systems", {"id": "rig-y", "name": "n", "owner_id": "1"}, "owner_id", "valid integer"),
    ]
    for url, body, field, message in cases:
        r = c.post(url, json=body, headers=h)
        assert message in _problem(r, field), (url, body)
    # NaN and Infinity are no JSON numbers, though Python's parser reads them: they are refused with the
    # cycle's other checks, per item, naming the channel (here at ingestion; predictions in tests/test_serve_app.py).
    for token in ("NaN", "Infinity", "1e999"):
        body = json.dumps({"system_id": "rig-h", "cycles": [{**cycle, "idempotency_key": f"nan-{token}"}]})
        r = c.post(
            "/api/v1/ingestion/cycles",
            content=body.replace("[45.0, 45.0,", f"[45.0, {token},", 1),
            headers={**h, "content-type": "application/json"},
        )
        [item] = r.json()["items"]
        assert r.status_code == 200 and item["status"] == "rejected", (token, r.text)
        assert item["error"]["channel"] == "TS1" and "NaN or infinity" in item["error"]["message"], token
    # What the schema allows still passes: integers as samples, a time in any timezone.
    r = c.post(
        "/api/v1/ingestion/cycles",
        json={
            "system_id": "rig-h",
            "cycles": [{**cycle, "started_at": "2026-01-01T02:00:00+02:00", "sensor_data": {"TS1": [45] * 60}}],
        },
        headers=h,
    )
    assert r.status_code == 200 and r.json()["items"][0]["status"] in ("stored", "rejected"), r.text


@pytest.mark.parametrize("streamed", [False, True], ids=["declared-length", "streamed"])
def test_an_over_large_body_is_a_413_in_the_error_body_and_audited(platform, streamed):
    """Like every refusal: ``{"detail", "trace_id"}``, the trace id in ``X-Request-ID`` and an audit record
    (the size limit runs inside the request observer)."""
    owner = _owner_with_system(platform)
    limit = platform.app.state.settings.max_body_bytes
    chunk = b'{"system_id": "rig-h", "sensor_data": {"TS1": [' + b"45.0, " * (limit // 6) + b"45.0]}}"
    content = iter([chunk[i : i + 65536] for i in range(0, len(chunk), 65536)]) if streamed else chunk
    r = platform.client.post(
        "/api/v1/diagnostics/predict",
        content=content,
        headers={**owner["headers"], "content-type": "application/json", "X-Request-ID": f"big-{streamed}"},
    )
    assert r.status_code == 413, r.text
    body = r.json()
    assert (
        f"exceeds {limit} bytes" in body["detail"]
        and body["trace_id"] == r.headers["X-Request-ID"] == f"big-{streamed}"
    )
    platform.flush_audit()
    [record] = platform.run(lambda s: search(s, AuditFilter(trace_id=f"big-{streamed}")))
    assert record.status == 413
