"""The platform features through the running Serve application, over HTTP.

History of served predictions, feedback that changes the Adaptive model (on every
replica, and across a replica restart), ingestion that survives an app restart,
and the metrics on Ray's Prometheus endpoint.
"""

from __future__ import annotations

import time
import uuid

import httpx
import numpy as np
import pytest

from tests.fixtures.serve_app import MODEL_VERSIONS, simulated_request

pytestmark = pytest.mark.ray

COMPONENT_ORDER = {
    "cooler": (100, 20, 3),
    "valve": (100, 90, 80, 73),
    "pump": (0, 1, 2),
    "accumulator": (130, 115, 100, 90),
}


@pytest.fixture(scope="module")
def engineer(api):
    username, password = api.create_user("engineer")
    headers = api.auth(api.token(username, password))
    return {"username": username, "headers": headers, "system": api.create_system(username)}


def _predict(api, engineer, seed: int, use_cache: bool = True, **levels) -> httpx.Response:
    body = {**simulated_request(engineer["system"], seed=seed, **levels), "use_cache": use_cache}
    r = api.http.post("/api/v1/diagnostics/predict", json=body, headers=engineer["headers"])
    assert r.status_code == 200, r.text
    return r


# --- prediction history -----------------------------------------------------------------
def test_served_predictions_are_stored_with_cache_hits_marked(api, engineer):
    first = _predict(api, engineer, seed=11)
    second = _predict(api, engineer, seed=11)
    assert second.json()["cache_hit"] is True
    ids = [int(first.headers["X-Prediction-ID"]), int(second.headers["X-Prediction-ID"])]
    _predict(api, engineer, seed=12, valve=73)
    page = api.http.get(
        f"/api/v1/systems/{engineer['system']}/predictions",
        params={"limit": 2, "offset": 1},
        headers=engineer["headers"],
    ).json()["items"]
    assert [p["id"] for p in page] == ids[::-1]
    assert [p["cache_hit"] for p in page] == [True, False]
    assert page[1]["trace_id"] == first.json()["trace_id"]
    assert set(page[1]["model_versions"]) == {"catboost", "xgboost", "random_forest", "adaptive"}
    assert page[1]["result"]["prediction"] == first.json()["prediction"]

    one = api.http.get(f"/api/v1/systems/{engineer['system']}/predictions/{ids[0]}", headers=engineer["headers"])
    assert one.status_code == 200 and one.json()["source"] == "predict"
    critical = api.http.get(
        f"/api/v1/systems/{engineer['system']}/predictions",
        params={"severity": "critical", "start": "2000-01-01T00:00:00Z"},
        headers=engineer["headers"],
    ).json()["items"]
    assert critical and all(p["severity"] == "critical" for p in critical)
    r = api.http.get(
        f"/api/v1/systems/{engineer['system']}/predictions", params={"severity": "bad"}, headers=engineer["headers"]
    )
    assert r.status_code == 422 and "unknown severity 'bad'" in r.text

    batch = api.http.post(
        "/api/v1/diagnostics/predict/batch",
        headers=engineer["headers"],
        json={
            "system_id": engineer["system"],
            "items": [simulated_request(engineer["system"], seed=13)["sensor_data"], {"TS1": [1.0]}],
        },
    )
    batch_ids = batch.headers["X-Prediction-IDs"].split(",")
    assert batch_ids[0].isdigit() and batch_ids[1] == ""


# --- feedback → Adaptive ------------------------------------------------------------------
MODEL_ID = f"uci-1hz@{MODEL_VERSIONS[0]}"  # what the session app serves for the default profile


def _serving_revision(handle) -> str | None:
    """The learned state a replica serves the session's model id with (loading it if need be)."""
    handle = handle.options(multiplexed_model_id=MODEL_ID)
    handle.warm.remote().result(timeout_s=60)
    [held] = [m for m in handle.info.remote().result(timeout_s=30)["models"] if m["model_id"] == MODEL_ID]
    return held["state_revision"]


def _adaptive_level(handle, sensor_data: dict, component: str) -> int:
    from hydraulics.features import extract_cycles

    X, errors = extract_cycles([sensor_data], "rig_1hz")
    assert not errors
    probas = handle.options(multiplexed_model_id=MODEL_ID).predict.remote(X).result(timeout_s=60).probas[component]
    return COMPONENT_ORDER[component][int(np.argmax(probas[0]))]


def _adaptive_replica_names(app_name: str) -> list[str]:
    import ray

    return [
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"{app_name}#AdaptiveModel" in a["name"]
    ]


def test_feedback_teaches_the_adaptive_model_everywhere_and_survives_a_restart(api, engineer, ray_cluster):
    import ray
    from ray import serve

    from configs.settings import get_settings
    from deployments.builder import serve_config_application
    from deployments.model_servers import ModelServer
    from diagnosis.store import ModelStore

    main = serve.get_deployment_handle("AdaptiveModel", app_name="hdx")
    # Two more Adaptive replicas in an app of their own stand for a scaled-out deployment.
    [options] = [d for d in serve_config_application()["deployments"] if d["name"] == "AdaptiveModel"]
    options = {k: v for k, v in options.items() if k != "autoscaling_config"}
    settings = get_settings()
    pair_app = ModelServer.options(**{**options, "num_replicas": 2}).bind(
        family="adaptive", store=ModelStore(settings.model_store_uri), sync_interval_s=settings.adaptive_sync_interval_s
    )
    serve.run(pair_app, name="hdx-adaptive-pair", route_prefix=None)
    pair = serve.get_deployment_handle("AdaptiveModel", app_name="hdx-adaptive-pair")
    try:
        # A healthy cycle the operator knows is not healthy: the valve lags badly.
        r = _predict(api, engineer, seed=21, use_cache=False)
        _predict(api, engineer, seed=21)
        assert _predict(api, engineer, seed=21).json()["cache_hit"] is True  # the answer before learning
        sensor_data = simulated_request(engineer["system"], seed=21)["sensor_data"]
        before = _adaptive_level(main, sensor_data, "valve")
        assert before != 73
        fb = api.http.post(
            f"/api/v1/systems/{engineer['system']}/predictions/{r.headers['X-Prediction-ID']}/feedback",
            json={"components": {"valve": 73}, "note": "valve sticks"},
            headers=engineer["headers"],
        )
        assert fb.status_code == 201, fb.text
        learned = fb.json()["learned"]
        assert learned["targets_updated"] == 1 and learned["state_revision"]

        deadline = time.time() + 15  # the sync interval is 1 s in the test env
        while time.time() < deadline:
            revisions = {_serving_revision(pair) for _ in range(12)}
            if revisions == {learned["state_revision"]}:
                break
            time.sleep(0.5)
        assert revisions == {learned["state_revision"]}
        assert _adaptive_level(main, sensor_data, "valve") == 73
        assert {_adaptive_level(pair, sensor_data, "valve") for _ in range(6)} == {73}
        # The cache key carries the learned state: the cycle is diagnosed afresh, by the new state.
        fresh = _predict(api, engineer, seed=21).json()
        assert fresh["cache_hit"] is False and fresh["state_revisions"] == {"adaptive": learned["state_revision"]}
        [adaptive] = [m for m in fresh["ml_predictions"] if m["ml_model"] == "adaptive"]
        assert adaptive["state_revision"] == learned["state_revision"]
        assert _predict(api, engineer, seed=21).json()["cache_hit"] is True

        # Kill the main app's Adaptive replica; Serve starts a new one, which loads the newest state.
        [name] = _adaptive_replica_names("hdx")
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            names = _adaptive_replica_names("hdx")
            if names and names != [name]:
                try:
                    if _serving_revision(main) == learned["state_revision"]:
                        break
                except Exception:  # the replacement is still starting
                    pass
            time.sleep(1)
        assert _adaptive_replica_names("hdx") != [name]
        assert _adaptive_level(main, sensor_data, "valve") == 73

        # Concurrent feedback on the pair's two replicas: each update is committed, none lost.
        from hydraulics.features import extract_cycles

        store = ModelStore(settings.model_store_uri).for_profile("uci-1hz")
        updates_before = store.load("adaptive", MODEL_VERSIONS[0]).model.n_updates
        X, _ = extract_cycles([sensor_data], "rig_1hz")
        replies = [pair.options(multiplexed_model_id=MODEL_ID).learn.remote(X, {"valve": [73]}) for _ in range(6)]
        revisions = {reply.result(timeout_s=120)["state_revision"] for reply in replies}
        assert len(revisions) == 6 and store.latest_state("adaptive", MODEL_VERSIONS[0]) == max(revisions)
        assert store.load("adaptive", MODEL_VERSIONS[0]).model.n_updates == updates_before + 6
    finally:
        serve.delete("hdx-adaptive-pair")


def test_feedback_is_validated(api, engineer):
    pid = _predict(api, engineer, seed=22).headers["X-Prediction-ID"]
    url = f"/api/v1/systems/{engineer['system']}/predictions/{pid}/feedback"
    r = api.http.post(url, json={"components": {"valve": 55}}, headers=engineer["headers"])
    assert r.status_code == 422 and "valve: unknown level 55; expected one of [100, 90, 80, 73]" in r.text
    r = api.http.post(url, json={"components": {"gearbox": 1}}, headers=engineer["headers"])
    assert r.status_code == 422 and "unknown component 'gearbox'" in r.text
    r = api.http.post(url, json={"components": {}}, headers=engineer["headers"])
    assert r.status_code == 422
    r = api.http.post(
        f"/api/v1/systems/{engineer['system']}/predictions/999999/feedback",
        json={"components": {"valve": 100}},
        headers=engineer["headers"],
    )
    assert r.status_code == 404 and "prediction 999999" in r.text
    viewer, pw = api.create_user("viewer")
    r = api.http.post(url, json={"components": {"valve": 100}}, headers=api.auth(api.token(viewer, pw)))
    assert r.status_code == 403 and "may not change system" in r.text


# --- ingestion ----------------------------------------------------------------------------
def _cycles(system: str, n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "idempotency_key": f"k-{offset + i}",
            "started_at": f"2026-03-01T12:{offset + i:02d}:00Z",
            "sensor_data": simulated_request(system, seed=100 + offset + i)["sensor_data"],
        }
        for i in range(n)
    ]


def test_ingestion_is_idempotent_and_rejects_per_item(api, engineer):
    system = api.create_system(engineer["username"])
    cycles = _cycles(system, 3)
    bad = {**cycles[0], "idempotency_key": "bad-1", "sensor_data": {**cycles[0]["sensor_data"], "TS1": [500.0] * 60}}
    body = {"system_id": system, "cycles": [*cycles, bad], "diagnose": True}
    first = api.http.post("/api/v1/ingestion/cycles", json=body, headers=engineer["headers"])
    assert first.status_code == 200, first.text
    out = first.json()
    assert (out["stored"], out["duplicates"], out["rejected"]) == (3, 0, 1)
    assert out["items"][3]["error"]["channel"] == "TS1" and "plausible range" in out["items"][3]["error"]["message"]
    assert all(it["prediction_id"] and it["diagnosis"]["severity"] for it in out["items"][:3])

    again = api.http.post("/api/v1/ingestion/cycles", json=body, headers=engineer["headers"]).json()
    assert (again["stored"], again["duplicates"], again["rejected"]) == (0, 3, 1)
    readings = api.http.get(f"/api/v1/systems/{system}/readings", headers=engineer["headers"]).json()["items"]
    assert [r["idempotency_key"] for r in readings] == ["k-0", "k-1", "k-2"]
    history = api.http.get(f"/api/v1/systems/{system}/predictions", headers=engineer["headers"]).json()["items"]
    assert len(history) == 3 and {p["source"] for p in history} == {"ingestion"}  # the retry diagnosed nothing twice
    latest = api.http.get(f"/api/v1/systems/{system}/readings/latest", headers=engineer["headers"]).json()
    assert latest["idempotency_key"] == "k-2" and len(latest["sensor_data"]) == 8
    ranged = api.http.get(
        f"/api/v1/systems/{system}/readings",
        headers=engineer["headers"],
        params={"start": "2026-03-01T12:01:00Z", "end": "2026-03-01T12:02:00Z"},
    ).json()["items"]
    assert [r["idempotency_key"] for r in ranged] == ["k-1"]

    dup_in_batch = {"system_id": system, "cycles": [_cycles(system, 1, 10)[0]] * 2}
    out = api.http.post("/api/v1/ingestion/cycles", json=dup_in_batch, headers=engineer["headers"]).json()
    assert [it["status"] for it in out["items"]] == ["stored", "rejected"]
    assert "appears earlier in this batch" in out["items"][1]["error"]["message"]
    naive = {"system_id": system, "cycles": [{**cycles[0], "started_at": "2026-03-01T12:00:00"}]}
    assert api.http.post("/api/v1/ingestion/cycles", json=naive, headers=engineer["headers"]).status_code == 422

    viewer, pw = api.create_user("viewer")
    r = api.http.post("/api/v1/ingestion/cycles", json=body, headers=api.auth(api.token(viewer, pw)))
    assert r.status_code == 403 and "may not change system" in r.text


def _run_ingress(name: str) -> str:
    """A second HDX ingress (another app, same database, the session's ensemble) under ``/name``."""
    from ray import serve

    from configs.settings import get_settings
    from deployments.ingress import Ingress

    ensemble = serve.get_deployment_handle("DiagnosisEnsemble", app_name="hdx")
    serve.run(
        Ingress.options(name=f"Ingress-{name}", ray_actor_options={"num_cpus": 0.2}).bind(
            ensemble, None, get_settings()
        ),
        name=name,
        route_prefix=f"/{name}",
    )
    return name


def test_acknowledged_batch_survives_an_app_restart(api, engineer, ray_cluster):
    from ray import serve

    system = api.create_system(engineer["username"])
    body = {"system_id": system, "cycles": _cycles(system, 5)}
    first = f"hdx-ingest-{uuid.uuid4().hex[:6]}"
    _run_ingress(first)
    try:
        r = api.http.post(f"/{first}/api/v1/ingestion/cycles", json=body, headers=engineer["headers"])
        assert r.status_code == 200 and r.json()["stored"] == 5, r.text
    finally:
        serve.delete(first)
    second = f"hdx-ingest-{uuid.uuid4().hex[:6]}"
    _run_ingress(second)
    try:
        readings = api.http.get(f"/{second}/api/v1/systems/{system}/readings", headers=engineer["headers"])
        assert readings.status_code == 200, readings.text
        assert [x["idempotency_key"] for x in readings.json()["items"]] == [f"k-{i}" for i in range(5)]
        retry = api.http.post(f"/{second}/api/v1/ingestion/cycles", json=body, headers=engineer["headers"]).json()
        assert retry["stored"] == 0 and retry["duplicates"] == 5
    finally:
        serve.delete(second)


# --- metrics ------------------------------------------------------------------------------
def test_metrics_reach_the_prometheus_endpoint(api, engineer, ray_cluster):
    import ray

    r = _predict(api, engineer, seed=31, valve=73)
    _predict(api, engineer, seed=31, valve=73)  # a cache hit
    fb = api.http.post(
        f"/api/v1/systems/{engineer['system']}/predictions/{r.headers['X-Prediction-ID']}/feedback",
        json={"components": {"valve": 73}},
        headers=engineer["headers"],
    )
    assert fb.status_code == 201, fb.text
    system = api.create_system(engineer["username"])
    api.http.post(
        "/api/v1/ingestion/cycles",
        json={"system_id": system, "cycles": _cycles(system, 2)},
        headers=engineer["headers"],
    )
    api.http.get("/api/v1/systems", headers={"Authorization": "Bearer nope"})
    free_user, pw = api.create_user("engineer", tier="free")
    headers = api.auth(api.token(free_user, pw))
    statuses = [api.http.get("/api/v1/users/me", headers=headers).status_code for _ in range(62)]
    assert statuses[-1] == 429

    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = [
        "ray_hdx_requests_total{",
        "ray_hdx_request_latency_ms_bucket{",
        'model="adaptive"',
        "ray_hdx_prediction_cache_total{",
        'result="hit"',
        "ray_hdx_anomalies_total{",
        "ray_hdx_auth_failures_total{",
        "ray_hdx_rate_limited_total{",
        'status="429"',
        "ray_hdx_ingestion_rows_total{",
        'outcome="stored"',
        "ray_hdx_feedback_total{",
    ]
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, missing
