"""The assistant through the real ingress: the full app with ``assistant: True``, driven over HTTP.

One module-scoped application ("hdx-rag" at ``/rag-app``) on the session Ray cluster,
reading the ``hdx_env`` settings; its index is built first with the Ray Data job over
``knowledge/docs`` into the ``hdx_env`` index store. Deleted when the module ends.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from bench.ready import wait_ready
from tests.fixtures.private_servers import free_port
from tests.fixtures.serve_app import Api

pytestmark = pytest.mark.ray
APP, PREFIX = "hdx-rag", "/rag-app"
URL = "/api/v1/rag/query"
QUESTION = "How do I measure the coil voltage of the valve solenoid?"
DEPLOY_TIMEOUT_S = 300
UNSCHEDULABLE_S = 90


@pytest.fixture(scope="module")
def index_manifest(hdx_env, ray_cluster):
    from configs.settings import PROJECT_ROOT, Settings
    from pipelines.build_index import build_index

    settings = Settings()  # reads hdx_env's HDX_HOME, as the replicas do
    return build_index([PROJECT_ROOT / "knowledge" / "docs"], settings.index_store_uri, embed_actors=1)


@pytest.fixture(scope="module")
def rag_app(hdx_env, ray_cluster, index_manifest):
    """Base URL of the full app with the assistant (``.../rag-app``)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from deployments.builder import app_from_serve_config

    started_serve = _get_global_client(raise_if_no_controller_running=False) is None
    # When the session app already started Serve, its HTTP options stay; ask which port it listens on.
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    port = _get_global_client().http_config.port
    app = app_from_serve_config(assistant=True, profile_versions={"uci-1hz": "test-v1", "basic": "test-v1"})

    failure: list[BaseException] = []

    def deploy():
        try:
            serve.run(app, name=APP, route_prefix=PREFIX)
        except BaseException as exc:  # reported below, in the test's thread
            failure.append(exc)

    deployer = threading.Thread(target=deploy, daemon=True)
    deployer.start()
    deadline, unschedulable, since = time.monotonic() + DEPLOY_TIMEOUT_S, None, None
    while deployer.is_alive() and time.monotonic() < deadline:
        deployer.join(2)
        status = serve.status().applications.get(APP)
        # Serve says so once replicas wait 30 s for CPUs. Briefly that can be the index job's actors
        # going away; still so 90 s later, the cluster is too small and serve.run would wait forever.
        unschedulable = next(
            (
                d.message
                for d in (status.deployments.values() if status else ())
                if "to be scheduled" in (d.message or "")
            ),
            None,
        )
        since = (since or time.monotonic()) if unschedulable else None
        if since is not None and time.monotonic() - since > UNSCHEDULABLE_S:
            break
    if deployer.is_alive() or failure:
        serve.delete(APP)
        reason = failure[:1] or unschedulable or f"not running after {DEPLOY_TIMEOUT_S} s"
        pytest.fail(
            f"{APP} did not deploy: {reason}. Other apps on this cluster: "
            f"{[a for a in serve.status().applications if a != APP]}"
        )
    base = f"http://127.0.0.1:{port}{PREFIX}"
    try:
        wait_ready(base)
        yield base
    finally:
        serve.delete(APP)
        if started_serve:  # leave no Serve behind whose HTTP options a later fixture could not set
            serve.shutdown()


@pytest.fixture(scope="module")
def api(rag_app, hdx_env) -> Api:
    return Api(rag_app, hdx_env["database_url"])


@pytest.fixture(scope="module")
def owner(api) -> dict:
    username, password = api.create_user()
    return {"username": username, "headers": api.auth(api.token(username, password))}


def _sse(text: str) -> list[tuple[str, dict]]:
    """(event name, JSON data) per frame; frames are separated by a blank line."""
    assert text.endswith("\n\n"), text[-200:]
    frames = []
    for block in text.strip("\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) <= {"event", "data"}, block
        frames.append((fields.get("event", "message"), json.loads(fields["data"])))
    return frames


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_needs_credentials(api):
    r = api.http.post(URL, json={"query": QUESTION})
    assert r.status_code == 401, r.text
    r = api.http.post(URL, json={"query": QUESTION}, headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401, r.text


def test_query_answered_with_cited_sources_and_metadata(api, owner, index_manifest):
    r = api.http.post(URL, json={"query": QUESTION, "max_results": 3}, headers=owner["headers"])
    assert r.status_code == 200, r.text
    body = r.json()
    sources, meta = body["sources"], body["metadata"]
    assert len({s["document_id"] for s in sources}) == 3
    assert sources[0]["document_id"].startswith("valve"), [s["document_id"] for s in sources]
    assert all(s["snippet"] and s["title"] and isinstance(s["score"], float) for s in sources)
    fields = {"document_id", "title", "heading_path", "anchor", "url", "snippet", "score", "cited"}
    assert all(set(s) == fields for s in sources)  # no vectors
    cited = [s for s in sources if s["cited"]]
    assert 1 <= len(cited) <= 2 and sources[: len(cited)] == cited  # [n] is sources[n-1]
    for n, source in enumerate(cited, start=1):  # the section itself, whole, under its number
        assert f"[{n}]\n\n{source['snippet']}" in body["response"]
    assert "coil" in body["response"].lower() and "This document" not in body["response"]
    assert meta["model"] == "extractive" and meta["degraded"] is False
    assert meta["index_version"] == index_manifest["version"]
    assert meta["retrieval_ms"] > 0 and meta["processing_time_ms"] >= meta["retrieval_ms"]
    assert meta["tokens_used"] == 0 and "system_id" not in meta


def test_a_source_links_to_its_section_of_the_document(api, owner):
    body = api.http.post(URL, json={"query": QUESTION}, headers=owner["headers"]).json()
    source = body["sources"][0]
    path, _, anchor = source["url"].partition("#")
    assert path == f"/api/v1/rag/documents/{source['document_id']}" and anchor == source["anchor"]
    r = api.http.get(path, headers=owner["headers"])
    assert r.status_code == 200, r.text
    document = r.json()
    section = next(s for s in document["sections"] if s["anchor"] == anchor)
    assert section["heading_path"] == source["heading_path"] and source["snippet"] in section["text"]
    assert document["title"] == source["title"] and document["index_version"] == body["metadata"]["index_version"]
    missing = api.http.get("/api/v1/rag/documents/no-such-document", headers=owner["headers"])
    assert missing.status_code == 404 and "no-such-document" in missing.text
    assert api.http.get(path).status_code == 401


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"query": ""}, "must not be empty"),
        ({"query": "   \n "}, "must not be empty"),
        ({"query": "x" * 2001}, "limit is 2000"),
        ({"query": 42}, "string"),
        ({"query": {"text": "valve"}}, "string"),
        ({"query": "bad\x00byte"}, "plain text"),
    ],
)
def test_invalid_queries_get_422(api, owner, body, reason):
    r = api.http.post(URL, json=body, headers=owner["headers"])
    assert r.status_code == 422, r.text
    assert reason in r.text


def test_system_access_is_enforced(api, owner):
    other, _ = api.create_user()
    foreign = api.create_system(other)
    own = api.create_system(owner["username"])
    r = api.http.post(URL, json={"query": QUESTION, "system_id": foreign}, headers=owner["headers"])
    assert r.status_code == 403, r.text
    r = api.http.post(URL, json={"query": QUESTION, "system_id": "rig-does-not-exist"}, headers=owner["headers"])
    assert r.status_code == 404, r.text
    r = api.http.post(URL, json={"query": QUESTION, "system_id": own, "max_results": 2}, headers=owner["headers"])
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["system_id"] == own and len({s["document_id"] for s in r.json()["sources"]}) == 2


def test_stream_is_well_formed_sse_ending_with_done(api, owner):
    body = {"query": "How do I clean the cooler fins?", "max_results": 2}
    with api.http.stream("POST", URL, json={**body, "stream": True}, headers=owner["headers"]) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    frames = _sse(text)
    assert frames[-1][0] == "done" and all(name == "message" for name, _ in frames[:-1]), frames
    assert len(frames) >= 2 and all(set(data) == {"token"} for _, data in frames[:-1])
    done = frames[-1][1]
    unary = api.http.post(URL, json=body, headers=owner["headers"]).json()
    assert "".join(data["token"] for _, data in frames[:-1]) == unary["response"]
    assert done["sources"] == unary["sources"] and done["metadata"]["degraded"] is False
    assert done["metadata"]["index_version"] == unary["metadata"]["index_version"]


def test_ready_includes_the_assistant(rag_app, index_manifest):
    r = httpx.get(f"{rag_app}/api/v1/ready", timeout=15)
    assert r.status_code == 200, r.text
    assistant = r.json()["checks"]["assistant"]
    assert assistant["ok"] is True, assistant
    assert assistant["index_version"] == index_manifest["version"]
    assert assistant["backend"] == "extractive" and assistant["model"] == "extractive"
    assert assistant["n_chunks"] == index_manifest["n_chunks"]
