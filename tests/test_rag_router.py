"""``POST /api/v1/rag/query``: authentication, system access, validation, SSE framing.

The pipeline itself is exercised through Serve in test_rag_serve.py; here the app has
no ``state.rag``, so a request that passes auth and validation ends in 503.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routers.auth import router as auth_router
from api.routers.rag import router, sse_events
from configs.settings import Settings
from storage.db import Database
from storage.kv import KV
from tests.fixtures.db import TEST_PASSWORD, add_system, add_user

pytestmark = pytest.mark.asyncio(loop_scope="session")
URL = "/api/v1/rag/query"


@pytest.fixture
async def client(db: Database, kv: KV, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.state.db, app.state.kv, app.state.settings = db, kv, settings
    install_error_handlers(app)  # as api.application.create_app does
    app.include_router(auth_router)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hdx.test") as c:
        c.app = app  # for tests that put a pipeline handle on app.state
        yield c


async def _auth(client: httpx.AsyncClient, db: Database, username: str = "tech") -> dict:
    async with db.session() as session:
        await add_user(session, username)
    r = await client.post("/api/v1/auth/token", json={"username": username, "password": TEST_PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_needs_credentials(client):
    assert (await client.post(URL, json={"query": "valve lag"})).status_code == 401


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"query": "   "}, "must not be empty"),
        ({"query": 42}, "string"),
        ({"query": ["valve"]}, "string"),
        ({"query": "x" * 2001}, "limit is 2000"),
        ({"query": "bad\x00byte"}, "plain text"),
        ({"query": "ok", "max_results": 0}, "greater than or equal to 1"),
        ({"query": "ok", "max_results": 11}, "less than or equal to 10"),
        ({"query": "ok", "stream": "yes"}, "boolean"),
        ({"query": "ok", "extra": 1}, "Extra inputs"),
    ],
)
async def test_invalid_bodies_get_422_with_a_reason(client, db, body, reason):
    headers = await _auth(client, db)
    r = await client.post(URL, json=body, headers=headers)
    assert r.status_code == 422, r.text
    assert reason in r.text


async def test_system_access_is_checked_before_the_pipeline(client, db):
    headers = await _auth(client, db)
    async with db.session() as session:
        other = await add_user(session, "other-owner")
        await add_system(session, "sys-foreign", other)
    assert (
        await client.post(URL, json={"query": "why flagged?", "system_id": "sys-none"}, headers=headers)
    ).status_code == 404
    assert (
        await client.post(URL, json={"query": "why flagged?", "system_id": "sys-foreign"}, headers=headers)
    ).status_code == 403
    # valid and allowed, but no assistant deployed in this app
    r = await client.post(URL, json={"query": "  valve lag  "}, headers=headers)
    assert r.status_code == 503 and "not deployed" in r.text


async def test_sse_framing_tokens_then_done():
    async def events():
        yield {"event": "token", "text": "Check the coil"}
        yield {"event": "token", "text": " [1]."}
        yield {"event": "done", "sources": [{"document_id": "valve-lag"}], "metadata": {"degraded": False}}

    frames = [f async for f in sse_events(events())]
    assert frames[0] == 'data: {"token": "Check the coil"}\n\n'
    assert frames[-1].startswith("event: done\ndata: ") and frames[-1].endswith("\n\n")
    assert json.loads(frames[-1].split("data: ", 1)[1])["sources"][0]["document_id"] == "valve-lag"


async def test_sse_replace_event_carries_the_answer_that_replaces_the_stream():
    async def events():
        yield {"event": "token", "text": "Replace the pump [7]"}
        yield {"event": "replace", "text": "**Repair — Valve lag** [1]\n\n1. Clean the spool."}
        yield {"event": "done", "sources": [], "metadata": {"degraded": True, "degraded_reason": "cited [7]"}}

    frames = [f async for f in sse_events(events())]
    assert (
        frames[1] == 'event: replace\ndata: {"text": "**Repair \\u2014 Valve lag** [1]\\n\\n1. Clean the spool."}\n\n'
    )
    assert frames[-1].startswith("event: done\n")


async def test_sse_reports_a_broken_stream_and_still_ends_with_done():
    async def events():
        yield {"event": "token", "text": "partial"}
        raise RuntimeError("replica died")

    frames = [f async for f in sse_events(events())]
    assert frames[1].startswith("event: error\n") and frames[-1].startswith("event: done\n")
    assert json.loads(frames[-1].split("data: ", 1)[1])["metadata"]["degraded"] is True


class _StoppedPipeline:
    """What a RagPipeline handle does once the deployment is gone: ``query.remote`` raises Serve's own
    unavailability error when awaited, ``stream.remote`` when its first event is awaited (the error
    classes are Ray's; the handle around them is in-process)."""

    def __init__(self, error: Exception):
        error_ = error

        class Query:
            async def remote(self, *args):
                raise error_

        class Stream:
            def remote(self, *args):
                async def events():
                    raise error_
                    yield  # an async generator, like a DeploymentResponseGenerator

                return events()

        self.query, self.stream = Query(), Stream()

    def options(self, **_):
        return self


def _stopped_errors() -> list[Exception]:
    from ray.exceptions import ActorDiedError
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    return [
        DeploymentUnavailableError(DeploymentID(name="RagPipeline", app_name="hdx")),
        ReplicaUnavailableError("RagPipeline#abc"),
        ActorDiedError(),
        BackPressureError(num_queued_requests=10, max_queued_requests=10),
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stopped_pipeline_is_503_with_retry_after(client, db, stream):
    headers = await _auth(client, db)
    for error in _stopped_errors():
        client.app.state.rag = _StoppedPipeline(error)
        r = await client.post(URL, json={"query": "valve lag", "stream": stream}, headers=headers)
        assert r.status_code == 503, (type(error).__name__, r.text)
        assert r.headers["Retry-After"] and type(error).__name__ in r.json()["detail"]


async def test_a_system_id_with_a_nul_is_422(client, db):
    headers = await _auth(client, db)
    r = await client.post(URL, json={"query": "why?", "system_id": "rig\x00"}, headers=headers)
    assert r.status_code == 422 and "control characters" in r.text
