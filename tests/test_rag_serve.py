"""The assistant on Ray Serve: answers, diagnosis bias, streaming, hot swap, backend failure.

One application name ("rag-test") is redeployed by the tests in order; keep them few.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from configs.settings import Settings
from knowledge.embedding import get_embedder
from knowledge.index_store import IndexStore
from tests.fixtures.ollama_standin import OllamaProtocolStandIn
from tests.test_knowledge_sample_corpus import SAMPLE_DOCS, write_sample_corpus

pytestmark = pytest.mark.ray
APP = "rag-test"
HOSE_DOC = {
    "hose-burst.md": """---
id: hose-burst
title: Hose burst
components: [hose]
tags: [safety]
---

## Symptoms

A burst hydraulic hose sprays oil at high pressure and the system pressure collapses at once.
"""
}


def _publish(folder, store: IndexStore) -> str:
    from pipelines.build_index import build_index

    return build_index([folder], store.uri, max_tokens=80, overlap_tokens=16, in_process=True)["version"]


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag")
    store = IndexStore(root / "indexes")
    v1 = _publish(write_sample_corpus(root / "kb1"), store)
    v2 = _publish(write_sample_corpus(root / "kb2", {**SAMPLE_DOCS, **HOSE_DOC}), store)
    store.set_latest(v1)
    return str(root / "indexes"), v1, v2


@pytest.fixture(scope="module")
def serve_app(ray_cluster, versions):
    from ray import serve

    from deployments.builder import assistant_from_serve_config

    def deploy(index_version="latest", **settings):
        settings = Settings(index_store_uri=versions[0], **settings)
        return serve.run(
            assistant_from_serve_config(settings, index_version=index_version), name=APP, route_prefix=None
        )

    yield deploy
    serve.delete(APP)


def test_query_answers_with_cited_sources(serve_app, versions):
    handle = serve_app()
    result = handle.query.remote("How do I measure the coil voltage of the valve solenoid?", 3).result()
    sources = result["sources"]
    assert sources[0]["document_id"] == "valve-lag" and sources[0]["cited"] is True
    assert {s["document_id"] for s in sources} >= {"valve-lag"} and len({s["document_id"] for s in sources}) == 3
    cited = [s for s in sources if s["cited"]]
    for n, source in enumerate(cited, start=1):  # each cited section is in the answer, whole, after its number
        assert f"[{n}]\n\n{source['snippet']}" in result["response"]
        assert source["url"] == f"/api/v1/rag/documents/valve-lag#{source['anchor']}" and source["anchor"]
    assert all(not s["cited"] for s in sources[len(cited) :])
    meta = result["metadata"]
    assert meta["index_version"] == versions[1] and meta["degraded"] is False and meta["model"] == "extractive"
    assert meta["retrieval_ms"] > 0 and meta["processing_time_ms"] >= meta["retrieval_ms"]


def test_a_diagnosis_steers_a_vague_question(serve_app):
    handle = serve_app()
    question = "Why is my system flagged?"
    for component, mode, expected in [
        ("valve", "valve_lag", "valve-lag"),
        ("cooler", "cooler_degradation", "cooler-fouling"),
        ("pump", "internal_pump_leakage", "pump-leakage"),
    ]:
        diagnosis = {"affected_components": [component], "anomaly_type": mode, "severity": "critical"}
        result = handle.query.remote(question, 3, "sys-1", diagnosis).result()
        assert result["sources"][0]["document_id"] == expected, (component, result["sources"])
        assert result["metadata"]["system_id"] == "sys-1"


def test_stream_yields_tokens_then_done(serve_app):
    handle = serve_app()
    question = "How do I clean the cooler fins?"
    events = list(handle.options(stream=True).stream.remote(question, 2))
    assert events[-1]["event"] == "done" and all(e["event"] == "token" for e in events[:-1])
    assert len(events) >= 2
    unary = handle.query.remote(question, 2).result()
    assert "".join(e["text"] for e in events[:-1]) == unary["response"]
    assert events[-1]["sources"] == unary["sources"]


def test_index_hot_swap_drops_no_queries(serve_app, versions):
    _, v1, v2 = versions
    handle = serve_app(index_version=v1)
    results, errors, stop = [], [], threading.Event()

    def ask():
        while not stop.is_set():
            try:
                results.append(handle.query.remote("hydraulic hose burst spraying oil", 2).result(timeout_s=30))
            except Exception as exc:  # any failed query fails the test
                errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    before = len(results)
    serve_app(index_version=v2)  # serve.run again: Serve replaces every replica, the Retriever on v2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(r["metadata"]["index_version"] == v2 for r in results[-3:]):
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert before > 0 and len(results) > before
    seen = [r["metadata"]["index_version"] for r in results]
    assert seen[0] == v1 and seen[-1] == v2
    assert results[-1]["sources"][0]["document_id"] == "hose-burst"
    assert all(r["sources"][0]["document_id"] != "hose-burst" for r in results if r["metadata"]["index_version"] == v1)


async def test_retriever_reconfigure_swaps_the_index_under_queries(versions):
    """What ``serve deploy`` with a new ``index_version`` does to a running Retriever: it loads
    the new index beside the old one and swaps the reference; queries meanwhile get the old."""
    from deployments.assistant import Retriever

    store_uri, v1, v2 = versions
    retriever = Retriever.func_or_class(store_uri=store_uri)
    await retriever.reconfigure({"index_version": v1})
    question = "hydraulic hose burst spraying oil"
    vector = get_embedder().embed([question])[0]
    seen: list[str] = []
    swap = asyncio.create_task(retriever.reconfigure({"index_version": v2}))
    while not swap.done():
        seen.append((await retriever.ground(vector, question, vector, k=1))["index_version"])
        await asyncio.sleep(0.001)
    await swap
    after = await retriever.ground(vector, question, vector, k=1)
    assert len(seen) > 1 and set(seen) == {v1}, seen  # answered while v2 loaded, from v1
    assert after["index_version"] == v2 and after["hits"][0]["document_id"] == "hose-burst"
    assert retriever.info()["configured"] == v2


def test_ollama_backend_then_degraded_when_it_goes_down(serve_app):
    standin = OllamaProtocolStandIn().start()
    try:
        handle = serve_app(llm_backend="ollama", ollama_url=standin.url, llm_model="standin-llm", llm_timeout_s=3.0)
        ok = handle.query.remote("How do I fix valve lag?", 2).result()
        assert ok["response"] == standin.behaviour.reply, (
            ok["metadata"].get("degraded_reason"),
            standin.behaviour.requests,
        )
        assert ok["metadata"]["model"] == "standin-llm" and ok["metadata"]["degraded"] is False
        assert ok["metadata"]["tokens_used"] > 0
        assert "How do I fix valve lag?" in standin.behaviour.requests[-1]["messages"][1]["content"]
        events = list(handle.options(stream=True).stream.remote("How do I fix valve lag?", 2))
        assert "".join(e["text"] for e in events[:-1]) == standin.behaviour.reply
        assert events[-1]["metadata"]["degraded"] is False

        standin.behaviour.delay_s = 5.0  # slower than llm_timeout_s
        slow = handle.query.remote("How do I fix valve lag?", 2).result()
        assert slow["metadata"]["degraded"] is True and "timeout" in slow["metadata"]["degraded_reason"].lower()
    finally:
        standin.stop()

    down = handle.query.remote("How do I measure the coil voltage at the connector?", 2).result()
    meta = down["metadata"]
    assert meta["degraded"] is True and "unreachable" in meta["degraded_reason"], meta
    assert meta["model"] == "extractive" and "[1]" in down["response"]
    assert down["sources"][0]["cited"] and down["sources"][0]["snippet"] in down["response"]
    events = list(handle.options(stream=True).stream.remote("How do I fix valve lag?", 2))
    assert events[-1]["event"] == "done" and events[-1]["metadata"]["degraded"] is True
    assert events[-1]["metadata"]["model"] == "extractive" and events[-1]["sources"]
    assert "unreachable" in events[-1]["metadata"]["degraded_reason"]
    assert [e["event"] for e in events] == ["replace", "done"] and "[1]" in events[0]["text"]


def test_an_llm_answer_citing_what_it_was_not_given_is_replaced_and_flagged(serve_app):
    """Through the Ollama protocol stand-in (no model runs here): the answer is checked, not trusted."""
    standin = OllamaProtocolStandIn().start()
    try:
        question = "How do I fix valve lag?"
        extractive = serve_app().query.remote(question, 2).result()["response"]
        handle = serve_app(llm_backend="ollama", ollama_url=standin.url, llm_model="standin-llm", llm_timeout_s=5.0)
        for reply, said in [
            ("Replace the whole pump [7]. Then restart [1].", "cited [7], which is not among"),
            ("Replace the whole pump. Then restart.", "cited none of the sources"),
        ]:
            standin.behaviour.reply = reply
            result = handle.query.remote(question, 2).result()
            meta = result["metadata"]
            assert meta["degraded"] is True and said in meta["degraded_reason"], meta
            assert meta["model"] == "extractive" and result["response"] == extractive
            assert "standin-llm" in meta["degraded_reason"]

            events = list(handle.options(stream=True).stream.remote(question, 2))
            assert events[-2]["event"] == "replace" and events[-2]["text"] == extractive
            assert events[-1]["event"] == "done" and events[-1]["metadata"]["degraded"] is True
            sent = "".join(e["text"] for e in events if e["event"] == "token")
            assert "[7]" not in sent  # the fabricated citation itself is never sent
        # The passages the model was given are the chosen sections, whole.
        prompt = standin.behaviour.requests[-1]["messages"][1]["content"]
        assert "[1] Valve lag" in prompt and "Cite only the numbers above" in prompt
    finally:
        standin.stop()


def test_an_outdated_index_is_reported_not_served(serve_app, tmp_path):
    import json

    from ray import serve

    from deployments.builder import assistant_from_serve_config

    store = IndexStore(tmp_path / "old")
    version = _publish(write_sample_corpus(tmp_path / "kb"), store)
    manifest = tmp_path / "old" / version / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 2}))  # before section blocks
    handle = serve.run(
        assistant_from_serve_config(Settings(index_store_uri=str(tmp_path / "old"))), name=APP, route_prefix=None
    )
    result = handle.query.remote("How do I fix valve lag?", 2).result()
    meta = result["metadata"]
    assert result["sources"] == [] and meta["degraded"] is True and meta["index_version"] is None
    assert "format 2" in meta["degraded_reason"] and "pipelines.build_index" in meta["degraded_reason"], meta
    info = handle.info.remote().result()
    assert info["index_version"] is None and info["backend"] == "extractive"
